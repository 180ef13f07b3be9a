//! Loopback plumbing: raw NATS protocol (the `INFO` greeting, probe connections), HTTP GETs
//! against the monitoring port, the ports file, free ports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub(crate) const LOOPBACK: &str = "127.0.0.1";

/// `n` distinct ports that were free a moment ago.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot reserve a loopback port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read a reserved port: {e}"))
}

/// The listening ports a server wrote to its ports file.
pub(crate) struct Ports {
    pub(crate) client: u16,
    pub(crate) monitor: Option<u16>,
}

/// Parses `{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"],...}`.
/// Returns `None` while the file is incomplete.
pub(crate) fn parse_ports(text: &str) -> Option<Ports> {
    Some(Ports {
        client: first_url_port(text, "nats")?,
        monitor: first_url_port(text, "monitoring"),
    })
}

fn first_url_port(text: &str, key: &str) -> Option<u16> {
    let start = text.find(&format!("\"{key}\":[\""))? + key.len() + 5;
    let rest = &text[start..];
    let url = &rest[..rest.find('"')?];
    url.rsplit(':').next()?.parse().ok()
}

/// The value of a string field in a flat JSON object (good enough for `INFO`).
pub(crate) fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &json[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(2))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    Ok(stream)
}

/// Connects to the client port and returns the server's first line, which must be `INFO`.
pub(crate) fn read_info(port: u16) -> Result<String, String> {
    let mut stream = connect(port)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err("connection closed before INFO".to_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("reading INFO: {e}")),
        }
        if line.len() > 64 * 1024 {
            return Err("INFO line too long".to_owned());
        }
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_owned();
    if line.starts_with("INFO ") {
        Ok(line)
    } else {
        Err(format!("expected INFO, got {line:?}"))
    }
}

/// A minimal HTTP/1.0 GET against the monitoring port; returns the raw response.
pub(crate) fn http_get(port: u16, path: &str) -> Result<String, String> {
    if port == 0 {
        return Err("monitoring is not enabled".to_owned());
    }
    let mut stream = connect(port)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n")
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(response)
}

/// The body of a raw HTTP response (empty if there is none).
pub(crate) fn http_body(response: &str) -> &str {
    response.split("\r\n\r\n").nth(1).unwrap_or_default()
}

/// A raw NATS protocol connection, enough to subscribe and publish probes.
pub(crate) struct ProbeConnection {
    stream: TcpStream,
    received: Vec<u8>,
}

impl ProbeConnection {
    pub(crate) fn open(port: u16) -> Result<Self, String> {
        let mut connection = ProbeConnection {
            stream: connect(port)?,
            received: Vec::new(),
        };
        // The greeting: `INFO {...}\r\n`, consumed up to its end.
        if !connection.wait_for(b"INFO ", Instant::now() + Duration::from_secs(2))?
            || !connection.wait_for_any(b"\r\n", Instant::now() + Duration::from_secs(2))?
        {
            return Err(format!("no INFO from port {port}"));
        }
        connection.send(
            "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\
             \"name\":\"harness-probe\"}\r\n",
        )?;
        Ok(connection)
    }

    pub(crate) fn send(&mut self, text: &str) -> Result<(), String> {
        self.stream
            .write_all(text.as_bytes())
            .map_err(|e| format!("probe connection write: {e}"))
    }

    /// Reads until `needle` starts a line, consuming everything up to and including it;
    /// `false` when `until` passes first. Answers the server's `PING`s meanwhile.
    pub(crate) fn wait_for(&mut self, needle: &[u8], until: Instant) -> Result<bool, String> {
        self.read_until(until, |received| {
            line_start(received, needle).map(|i| i + needle.len())
        })
    }

    /// Like [`ProbeConnection::wait_for`], for `needle` anywhere.
    fn wait_for_any(&mut self, needle: &[u8], until: Instant) -> Result<bool, String> {
        self.read_until(until, |received| {
            find(received, needle).map(|i| i + needle.len())
        })
    }

    /// Reads until `found` returns where the wanted text ends, and consumes up to there.
    fn read_until(
        &mut self,
        until: Instant,
        found: impl Fn(&[u8]) -> Option<usize>,
    ) -> Result<bool, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = found(&self.received) {
                self.received.drain(..end);
                return Ok(true);
            }
            // Answer the server's keep-alive so the connection is not dropped.
            if let Some(i) = line_start(&self.received, b"PING\r\n") {
                self.received.drain(i..i + 6);
                self.send("PONG\r\n")?;
                continue;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| format!("probe connection timeout: {e}"))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("the server closed the probe connection".to_owned()),
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("probe connection read: {e}")),
            }
        }
    }
}

/// Where `needle` first occurs at the start of a line of `text`.
fn line_start(text: &[u8], needle: &[u8]) -> Option<usize> {
    (0..text.len()).find(|&i| (i == 0 || text[i - 1] == b'\n') && text[i..].starts_with(needle))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_file_is_read_once_complete() {
        let text = r#"{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"]}"#;
        let ports = parse_ports(text).expect("complete");
        assert_eq!((ports.client, ports.monitor), (4222, Some(8222)));
        let no_monitor = parse_ports(r#"{"nats":["nats://127.0.0.1:4223"]}"#).unwrap();
        assert_eq!((no_monitor.client, no_monitor.monitor), (4223, None));
        assert!(parse_ports(r#"{"nats":["nats://127.0.0.1:42"#).is_none());
        assert!(parse_ports("").is_none());
    }

    #[test]
    fn info_fields_are_found() {
        let info = r#"INFO {"server_id":"NABC","version":"2.15.1","go":"go1.24"}"#;
        assert_eq!(
            json_string_field(info, "version").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(json_string_field(info, "missing"), None);
    }

    #[test]
    fn protocol_lines_are_matched_at_line_starts() {
        assert_eq!(line_start(b"PONG\r\n", b"PONG"), Some(0));
        assert_eq!(line_start(b"+OK\r\nMSG a 1 5\r\n", b"MSG "), Some(5));
        assert_eq!(line_start(b"INFO {\"x\":\"MSG \"}\r\n", b"MSG "), None);
        assert_eq!(find(b"INFO {}\r\n", b"\r\n"), Some(7));
        assert_eq!(http_body("HTTP/1.0 200 OK\r\nA: b\r\n\r\n{}"), "{}");
        assert_eq!(http_body("HTTP/1.0 200 OK\r\n"), "");
    }
}
