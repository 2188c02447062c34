//! The harness's promise: a test that fails midway (panic) or is killed outright leaves no
//! namespace, link or process behind. Each case runs in a child copy of this test binary.

use std::{path::Path, process::Command, time::Duration};

use lb_tests::{process::ChildGuard, require_root, topology::Topology, wait_for};

/// Runs in the child: builds a topology, starts a long-lived process inside it, reports the
/// process id, then fails (panics) or waits to be killed.
#[test]
#[ignore = "helper: runs only as the child copy started by the tests below"]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let topology = Topology::new(1).unwrap();
    let mut sleeper = topology.node.command("sleep");
    sleeper.arg("600");
    let sleeper = ChildGuard::spawn(sleeper).unwrap();
    println!("SLEEPER_PID={}", sleeper.pid());
    match role.as_str() {
        "panic" => panic!("failing midway on purpose"),
        _ => std::thread::sleep(Duration::from_secs(600)),
    }
}

fn start_child(role: &str) -> (ChildGuard, u32, u32) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "child_role", "--ignored", "--nocapture", "--test-threads=1"]).env(ROLE, role);
    let mut child = ChildGuard::spawn(command).unwrap();
    let sleeper = wait_for(Duration::from_secs(20), "the child to build its topology", || {
        let output = child.output();
        let (_, rest) = output.split_once("SLEEPER_PID=")?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok()
    })
    .unwrap_or_else(|e| panic!("{e}; child output:\n{}", child.output()));
    let pid = child.pid();
    let _ = child.try_status();
    (child, pid, sleeper)
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_panicking_test_leaves_nothing_behind() {
    require_root!();
    let (mut child, pid, sleeper) = start_child("panic");
    let status = wait_for(Duration::from_secs(20), "the child to fail", || child.try_status()).unwrap();
    assert!(!status.success(), "the child test failed as arranged");
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "namespaces removed by the guards");
    wait_for(Duration::from_secs(5), "the process started in the namespace to be gone", || {
        (!process_alive(sleeper)).then_some(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs root: network namespaces, XDP (cargo xtask test runs it as root)"]
fn a_killed_test_is_cleaned_up_by_the_next_run() {
    require_root!();
    let (child, pid, sleeper) = start_child("wait");
    assert!(!namespaces_of(pid).is_empty(), "the child built its namespaces");
    assert!(Path::new(&format!("/proc/{sleeper}")).exists());
    // SIGKILL: no destructor runs in the child.
    let status = child.kill().unwrap();
    assert!(!status.success());
    // PR_SET_PDEATHSIG takes the child's own children down with it...
    wait_for(Duration::from_secs(5), "the orphaned process to die with its parent", || {
        (!process_alive(sleeper)).then_some(())
    })
    .unwrap();
    // ...and the next topology reaps the namespaces of the dead process.
    let next = Topology::new(0).unwrap();
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "stale namespaces reaped");
    drop(next);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Set in the child copy to pick what it does; absent in a normal run.
const ROLE: &str = "SLUICE_CLEANUP_ROLE";

fn namespaces_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("sluice-t-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; look at its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}
