//! The HTTP/1 codec: the request guard that refuses smuggling shapes before anything parses
//! a head ([`guard`]), Sluice's own HTTP/1 server for client connections, which hands HTTP/2
//! to hyper ([`server`]), the inline HTTP/1 upstream client ([`client`]), the header-block
//! writer both directions share ([`wire`]) and the one body framing both directions decode
//! ([`framing`]). Nothing here knows the request pipeline: the server takes a handler.

pub mod client;
pub mod framing;
pub mod guard;
pub mod server;
mod wire;
