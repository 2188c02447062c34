//! Handing listening sockets from a running `sluice` to the binary that replaces it: the old
//! process sends every listening socket over a `SOCK_SEQPACKET` pair with `SCM_RIGHTS`, each
//! under a key that names its role (`worker/W/L/shared`, `admin`, `control`...), and the new
//! process takes them by key instead of binding. The sockets are the same kernel objects, so
//! their accept queues and their places in SO_REUSEPORT groups carry over: no connection
//! attempt meets a closed port. Then the new process says it is ready over the same pair.
//!
//! Pure std and libc: `SCM_RIGHTS` has no stable API in std (`SocketAncillary` is unstable) and
//! none in our dependencies, so the two calls that need it are `unsafe` here, each with its
//! reason.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The environment variable that tells a new process which descriptor is its handover channel.
pub const CHANNEL_ENV: &str = "SLUICE_HANDOVER_FD";

/// The descriptor number the channel gets in the new process.
pub const CHANNEL_FD: RawFd = 3;

/// Descriptors per message: the kernel takes at most 253 (`SCM_MAX_FD`) in one.
const FDS_PER_MESSAGE: usize = 200;

/// Large enough for one message of keys (200 keys of ~20 bytes) or a status line.
const MESSAGE_BYTES: usize = 64 * 1024;

/// The listening sockets a new process was handed, taken once each by key.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: parking_lot::Mutex<BTreeMap<String, OwnedFd>>,
}

impl Inherited {
    pub fn new(sockets: Vec<(String, OwnedFd)>) -> Inherited {
        Inherited { sockets: parking_lot::Mutex::new(sockets.into_iter().collect()) }
    }

    /// The inherited TCP listener under `key` if it listens on `want` (port 0 in `want`
    /// matches any port); a socket that does not match is left for `leftover`.
    pub fn take_tcp(&self, key: &str, want: SocketAddr) -> Option<std::net::TcpListener> {
        let mut sockets = self.sockets.lock();
        let fd = sockets.get(key)?;
        let listener = std::net::TcpListener::from(fd.try_clone().ok()?);
        let bound = listener.local_addr().ok()?;
        let matches = bound.ip() == want.ip() && (want.port() == 0 || bound.port() == want.port());
        if !matches {
            return None;
        }
        sockets.remove(key);
        listener.set_nonblocking(true).ok()?;
        Some(listener)
    }

    /// The inherited UDP socket under `key` if it is bound to `want` (L4 services).
    pub fn take_udp(&self, key: &str, want: SocketAddr) -> Option<std::net::UdpSocket> {
        let mut sockets = self.sockets.lock();
        let socket = std::net::UdpSocket::from(sockets.get(key)?.try_clone().ok()?);
        if socket.local_addr().ok()? != want {
            return None;
        }
        sockets.remove(key);
        Some(socket)
    }

    /// The inherited Unix listener under `key`.
    pub fn take_unix(&self, key: &str) -> Option<std::os::unix::net::UnixListener> {
        self.sockets.lock().remove(key).map(std::os::unix::net::UnixListener::from)
    }

    /// Keys of the sockets nobody took (closed when this is dropped).
    pub fn leftover(&self) -> Vec<String> {
        self.sockets.lock().keys().cloned().collect()
    }
}

/// `take_tcp` when there is an inheritance, else `bind`.
pub fn listener_for(
    inherited: Option<&Inherited>,
    key: &str,
    addr: SocketAddr,
    bind: impl FnOnce(SocketAddr) -> io::Result<std::net::TcpListener>,
) -> io::Result<std::net::TcpListener> {
    match inherited.and_then(|i| i.take_tcp(key, addr)) {
        Some(listener) => Ok(listener),
        None => bind(addr),
    }
}

/// What goes over the channel, one JSON document per message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// Old to new: the keys of the descriptors attached to this message, in order.
    Sockets { keys: Vec<String>, more: bool },
    /// New to old: serving on the sockets it was handed.
    Ready { pid: u32 },
    /// New to old: starting failed, and why.
    Failed { error: String },
}

/// One end of the handover channel.
pub struct Channel {
    fd: OwnedFd,
}

/// How the new process's start ended, as the old one sees it.
#[derive(Debug)]
pub enum Outcome {
    Ready { pid: u32 },
    Failed(String),
}

impl Channel {
    /// A connected pair: the old process keeps the first, the new one gets the second.
    pub fn pair() -> io::Result<(Channel, OwnedFd)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into the array we own.
        let rc = unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: ours }, theirs))
    }

    /// The channel this process was started with by the process it replaces, if any.
    pub fn from_env() -> io::Result<Option<Channel>> {
        let Some(value) = std::env::var_os(CHANNEL_ENV) else { return Ok(None) };
        let fd: RawFd = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{CHANNEL_ENV}={value:?} is not a descriptor"),
            )
        })?;
        // SAFETY: a zeroed stat is a valid value for the kernel to overwrite.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on any number is harmless; it tells whether the descriptor exists.
        if unsafe { libc::fstat(fd, &mut stat) } != 0 || (stat.st_mode & libc::S_IFMT) != libc::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{CHANNEL_ENV}={fd} is not an open socket; start `sluice run` without it"),
            ));
        }
        // SAFETY: the descriptor exists, is a socket, and was left to this process to own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(fd.as_fd())?;
        Ok(Some(Channel { fd }))
    }

    /// Sends every socket with its key.
    pub fn send_sockets(&self, sockets: &[(String, BorrowedFd<'_>)]) -> io::Result<()> {
        let mut chunks = sockets.chunks(FDS_PER_MESSAGE).peekable();
        if chunks.peek().is_none() {
            return self.send(&Message::Sockets { keys: Vec::new(), more: false }, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let keys = chunk.iter().map(|(k, _)| k.clone()).collect();
            let fds: Vec<RawFd> = chunk.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
            self.send(&Message::Sockets { keys, more: chunks.peek().is_some() }, &fds)?;
        }
        Ok(())
    }

    /// Receives the sockets sent by `send_sockets`, waiting at most `timeout` for each message.
    pub fn receive_sockets(&self, timeout: Duration) -> io::Result<Vec<(String, OwnedFd)>> {
        let mut all = Vec::new();
        loop {
            let (message, fds) = self.receive(timeout)?;
            let Message::Sockets { keys, more } = message else {
                return Err(invalid("expected the sockets first"));
            };
            if keys.len() != fds.len() {
                return Err(invalid("the number of keys and descriptors differ"));
            }
            all.extend(keys.into_iter().zip(fds));
            if !more {
                return Ok(all);
            }
        }
    }

    /// Tells the old process this one serves.
    pub fn send_ready(&self) -> io::Result<()> {
        self.send(&Message::Ready { pid: std::process::id() }, &[])
    }

    /// Tells the old process this one could not start.
    pub fn send_failed(&self, error: &str) -> io::Result<()> {
        self.send(&Message::Failed { error: error.to_owned() }, &[])
    }

    /// Waits for the new process's verdict; its exit (the channel closing) is a failure.
    pub fn wait_outcome(&self, timeout: Duration) -> Outcome {
        match self.receive(timeout) {
            Ok((Message::Ready { pid }, _)) => Outcome::Ready { pid },
            Ok((Message::Failed { error }, _)) => Outcome::Failed(error),
            Ok((other, _)) => Outcome::Failed(format!("unexpected message {other:?}")),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Outcome::Failed(format!("not ready within {} s", timeout.as_secs()))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Outcome::Failed("it exited before it was ready".into())
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    fn send(&self, message: &Message, fds: &[RawFd]) -> io::Result<()> {
        let data = serde_json::to_vec(message).map_err(|e| invalid(&e.to_string()))?;
        send_with_fds(self.fd.as_fd(), &data, fds)
    }

    fn receive(&self, timeout: Duration) -> io::Result<(Message, Vec<OwnedFd>)> {
        set_receive_timeout(self.fd.as_fd(), timeout)?;
        let mut buffer = vec![0u8; MESSAGE_BYTES];
        let (len, fds) = receive_with_fds(self.fd.as_fd(), &mut buffer, FDS_PER_MESSAGE)?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other process closed the channel"));
        }
        let message = serde_json::from_slice(&buffer[..len]).map_err(|e| invalid(&e.to_string()))?;
        Ok((message, fds))
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("handover: {what}"))
}

fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fd` the child's `CHANNEL_FD` without close-on-exec: call between fork and exec
/// (`CommandExt::pre_exec`); only async-signal-safe calls.
pub fn install_in_child(fd: RawFd) -> io::Result<()> {
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only the child's descriptor table.
    unsafe {
        if fd == CHANNEL_FD {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(fd, CHANNEL_FD) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_receive_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn send_with_fds(socket: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds) as libc::c_uint;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = if fds.is_empty() { 0 } else { (unsafe { libc::CMSG_SPACE(fd_bytes) }) as usize };
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: a zeroed msghdr is its documented empty value; every pointer set below points into
    // buffers that outlive the sendmsg call, and the one cmsghdr written lies inside `control`
    // (CMSG_SPACE bytes for `fds.len()` descriptors).
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
        libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != data.len() {
        return Err(invalid("short send"));
    }
    Ok(())
}

fn receive_with_fds(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space =
        unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as libc::c_uint) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    // SAFETY: as in send_with_fds; the kernel writes at most `msg_controllen` bytes of control
    // data and `iov_len` bytes of data into buffers we own.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: see above.
    let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of well-formed cmsghdrs; each SCM_RIGHTS
    // payload holds descriptors now owned by this process, taken once each.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        return Err(invalid("a message was truncated"));
    }
    Ok((received as usize, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cross_the_channel_by_key_and_keep_their_queue() {
        let (old, theirs) = Channel::pair().unwrap();
        let new = Channel { fd: theirs };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A connection queued before the handover is accepted after it, by the new owner.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let many: Vec<std::net::TcpListener> =
            (0..250).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let mut sent = vec![("worker/0/0/shared".to_owned(), listener.as_fd())];
        sent.extend(many.iter().enumerate().map(|(i, l)| (format!("extra/{i}"), l.as_fd())));
        old.send_sockets(&sent).unwrap();
        let received = new.receive_sockets(Duration::from_secs(5)).unwrap();
        assert_eq!(received.len(), 251, "two messages' worth");
        drop(listener);
        let inherited = Inherited::new(received);
        let wrong = SocketAddr::from(([127, 0, 0, 2], addr.port()));
        assert!(inherited.take_tcp("worker/0/0/shared", wrong).is_none(), "another address is not taken");
        let taken = inherited.take_tcp("worker/0/0/shared", addr).expect("taken by key");
        taken.set_nonblocking(false).unwrap();
        assert!(taken.accept().is_ok(), "the queued connection is there");
        assert_eq!(inherited.leftover().len(), 250);
        new.send_ready().unwrap();
        assert!(matches!(old.wait_outcome(Duration::from_secs(5)), Outcome::Ready { .. }));
        drop(new);
        assert!(
            matches!(old.wait_outcome(Duration::from_secs(5)), Outcome::Failed(e) if e.contains("exited"))
        );
    }

    #[test]
    fn a_silent_new_process_times_out() {
        let (old, _theirs) = Channel::pair().unwrap();
        let outcome = old.wait_outcome(Duration::from_millis(50));
        assert!(matches!(outcome, Outcome::Failed(ref e) if e.contains("not ready")), "{outcome:?}");
    }
}
