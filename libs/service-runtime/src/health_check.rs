//! `<app> health-check`: the container image's health check. Distroless
//! images have no shell and no curl, so the binary asks its own admin port
//! for `/readyz` with the configuration the server runs with.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use crate::{AppMain, load_config};

/// How long the check waits to connect, and then for the answer.
const PATIENCE: Duration = Duration::from_secs(3);

/// Exits 0 when the app's `/readyz` answers 200, 1 otherwise (printing the
/// answer or why there was none); 78 when the configuration is invalid.
#[allow(clippy::print_stderr, reason = "the binary's own output")]
pub fn run_health_check<C>(app: &AppMain<C>) -> ExitCode {
    let config = match load_config(app) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", app.info.name);
            return ExitCode::from(78);
        }
    };
    let admin = reachable((app.common)(&config).admin_addr);
    match get_readyz(admin) {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!("{}: not ready ({status}): {body}", app.info.name);
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!(
                "{}: no answer from http://{admin}/readyz: {error}",
                app.info.name
            );
            ExitCode::FAILURE
        }
    }
}

/// The address to dial for a listener bound to `addr`: a wildcard bind
/// (`0.0.0.0`, `[::]`) is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// One HTTP/1.1 `GET /readyz`: the status code and the body.
fn get_readyz(addr: SocketAddr) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    // The admin answer is a small JSON document; cap it all the same.
    stream.take(64 * 1024).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("the answer is not HTTP/1.1"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .trim();
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_checked_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9181".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(reachable(any).to_string(), "127.0.0.1:9181");
        let any6: SocketAddr = "[::]:9181".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(reachable(any6).to_string(), "[::1]:9181");
        let pod: SocketAddr = "10.0.0.7:9181".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(reachable(pod), pod);
    }
}
