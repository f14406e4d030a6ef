//! A hostile network against the real binary: connections that never send, slowloris
//! connections trickling header bytes, keep-alive connections left idle, and more connections
//! than the service takes. `/health` keeps answering throughout, and everything the service
//! refuses is refused with an answer a client can read.
//!
//! The service is started with a soft open-file limit of 1024 (a default deployment's), which
//! 600 silent connections used to exhaust; it raises the limit itself at start.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::redis_server::free_port;

/// The real binary on a free port with a soft open-file limit of 1024 (the hard one kept).
struct Exposed {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Exposed {
    fn start(env: &[(&str, &str)]) -> Exposed {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_conversa"));
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATA_DIR", data.path())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur = limit.rlim_max.min(1024);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start conversa");
        let exposed = Exposed {
            child,
            port,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while health(port, Duration::from_secs(1)).is_err() {
            assert!(Instant::now() < deadline, "conversa did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
        exposed
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets this test process hold thousands of sockets.
fn raise_own_file_limit() {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        assert!(
            limit.rlim_cur >= 4_500,
            "this test needs 4500 open files, the hard limit is {}",
            limit.rlim_cur
        );
    }
}

/// One `GET /health` on a fresh connection: the status line and the body.
fn health(port: u16, timeout: Duration) -> std::io::Result<(String, String)> {
    request(
        port,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        timeout,
    )
}

/// Sends `raw` on a fresh connection and reads the answer until the server closes it.
fn request(port: u16, raw: &str, timeout: Duration) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(raw.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or("").to_owned();
    Ok((status, body.to_owned()))
}

/// Whether the server closed `s` (a read gives end-of-file or a reset), waiting at most
/// `wait`.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (e.g. a 408 or 431): keep reading to the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn two_thousand_silent_connections_do_not_stop_health_and_are_closed() {
    raise_own_file_limit();
    let service = Exposed::start(&[("HEADER_READ_TIMEOUT_SECS", "2")]);
    let port = service.port;
    let mut silent: Vec<TcpStream> = (0..2_000)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    // Slowloris: a request head trickled one byte at a time, never finished.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"POST /webhooks/kommo HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // While they are all open, /health answers, each time within a second.
    for _ in 0..10 {
        let (status, body) = health(port, Duration::from_secs(1)).expect("health answers");
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("\"ok\""), "{body}");
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
    }
    // The header-read timeout closes the silent and the trickling ones alike.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut open: Vec<&mut TcpStream> = silent.iter_mut().chain(slow.iter_mut()).collect();
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} connections still open after the header-read timeout",
            open.len()
        );
        open.retain_mut(|s| {
            let _ = s.write_all(b"Y");
            !closed_by_server(s, Duration::from_millis(5))
        });
    }
    let (status, _) = health(port, Duration::from_secs(1)).expect("health answers after");
    assert!(status.contains("200"), "{status}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let service = Exposed::start(&[("HEADER_READ_TIMEOUT_SECS", "1")]);
    let mut s = TcpStream::connect(("127.0.0.1", service.port)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then left idle: closed once the next request head does not come.
    let started = Instant::now();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(10)),
        "an idle keep-alive connection stays open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
}

#[test]
fn at_the_cap_an_idle_connection_makes_room_and_only_busy_ones_refuse() {
    // One client holding every slot with silent connections cannot lock others out: the
    // oldest idle one is let go for the newcomer.
    let service = Exposed::start(&[
        ("MAX_CONNECTIONS", "20"),
        ("HEADER_READ_TIMEOUT_SECS", "30"),
    ]);
    let port = service.port;
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for _ in 0..5 {
        let (status, _) = health(port, Duration::from_secs(2)).expect("an answer");
        assert!(status.contains("200"), "{status}");
    }
    let closed = held
        .iter_mut()
        .map(|s| closed_by_server(s, Duration::from_millis(200)))
        .filter(|closed| *closed)
        .count();
    assert!(closed >= 1, "no idle connection was let go");
    drop(held);

    // Every slot in the middle of a request (a body that never finishes): a newcomer gets a
    // clear 503, and the service recovers once they are gone.
    let service = Exposed::start(&[("MAX_CONNECTIONS", "20"), ("REQUEST_TIMEOUT_MS", "30000")]);
    let port = service.port;
    // `Expect: 100-continue`: the server's `100 Continue` proves the request is being handled
    // (its body awaited) before the next connection comes.
    let busy: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(
                b"POST /bot-control HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(got.starts_with("HTTP/1.1 100"), "connection {i}: {got:?}");
            s.write_all(b"{").unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let answer = health(port, Duration::from_secs(2)).expect("an answer, not a hang");
        if answer.0.contains("503") || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "too_many_connections", "{body}");
    drop(busy);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = health(port, Duration::from_secs(2)).unwrap();
        if status.contains("200") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_oversized_request_head_is_refused_without_a_hang() {
    let service = Exposed::start(&[]);
    let port = service.port;
    // A long target and a large header: our JSON errors.
    let long = format!(
        "GET /health?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(9_000)
    );
    let (status, body) = request(port, &long, Duration::from_secs(5)).unwrap();
    assert!(status.contains("414"), "{status}");
    assert!(body.contains("\"uri_too_long\""), "{body}");
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(20_000)
    );
    let (status, body) = request(port, &big, Duration::from_secs(5)).unwrap();
    assert!(status.contains("431"), "{status}");
    assert!(body.contains("\"headers_too_large\""), "{body}");
    // Beyond what the server reads at all: its own 431, then the connection is closed.
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "c".repeat(100_000)
    );
    let answer = request(port, &huge, Duration::from_secs(5));
    if let Ok((status, _)) = answer {
        assert!(status.is_empty() || status.contains("431"), "{status}");
    }
    let (status, _) = health(port, Duration::from_secs(1)).unwrap();
    assert!(status.contains("200"), "{status}");
}

#[test]
fn credentials_are_checked_before_the_body_arrives() {
    let service = Exposed::start(&[
        ("WEBHOOK_SECRET", "a-webhook-secret-0123"),
        ("API_KEY", "an-operator-key-0123456"),
        ("MAX_BODY_BYTES", "1024"),
    ]);
    // Each head announces a body far over the limit and sends none of it: the answer is
    // the missing credential, at once, not a 413 nor a wait for the body.
    for target in [
        "/webhooks/kommo?token=wrong",
        "/webhooks/kommo/wrong",
        "/send-response",
        "/send-response?contact_id=1&dispatch_id=x&reply_token=abc",
        "/bot-control",
    ] {
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = request(service.port, &head, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{target}: no answer before the body: {e}"));
        assert!(status.contains(" 401 "), "{target}: {status} {body}");
        assert!(body.contains("\"unauthorized\""), "{target}: {body}");
    }
}
