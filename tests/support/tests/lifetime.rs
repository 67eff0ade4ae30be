//! A server started by a test is gone after the test: on drop, on panic, and when the test
//! process itself is killed.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lucid_testkit::{process_alive, redis, redis_ping};

fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn server_answers_and_is_gone_after_drop() {
    let server = redis();
    let pid = server.pid().expect("running");
    assert_eq!(redis_ping(server.addr()).expect("ping").trim(), "+PONG");
    drop(server);
    assert!(
        !process_alive(pid),
        "redis-server {pid} outlived its Server"
    );
}

#[test]
fn server_is_gone_when_the_test_panics() {
    let pid = std::sync::Mutex::new(0);
    let result = std::panic::catch_unwind(|| {
        let server = redis();
        *pid.lock().expect("lock") = server.pid().expect("running");
        panic!("the test fails while the server runs");
    });
    assert!(result.is_err());
    let pid = *pid.lock().expect("lock");
    assert!(pid != 0);
    assert!(
        !process_alive(pid),
        "redis-server {pid} outlived a panicking test"
    );
}

#[test]
fn server_dies_with_a_killed_test_process() {
    let mut holder = Command::new(env!("CARGO_BIN_EXE_testkit-hold"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("run testkit-hold");
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read pid");
    let pid: u32 = line.trim().parse().expect("pid");
    assert!(process_alive(pid));
    holder.kill().expect("SIGKILL the holder");
    holder.wait().expect("reap holder");
    assert!(
        gone_within(pid, Duration::from_secs(5)),
        "redis-server {pid} outlived the killed test process"
    );
}

#[test]
fn stop_start_again_pause_resume() {
    let mut server = redis();
    let port = server.port();
    server.stop();
    assert!(
        redis_ping(server.addr()).is_err(),
        "stopped server still answers"
    );
    server.start_again();
    assert_eq!(server.port(), port);
    assert_eq!(redis_ping(server.addr()).expect("ping").trim(), "+PONG");
    server.pause();
    assert!(redis_ping(server.addr()).is_err(), "paused server answered");
    server.resume();
    assert_eq!(redis_ping(server.addr()).expect("ping").trim(), "+PONG");
}

#[test]
fn missing_binary_fails_with_an_install_hint() {
    static NOPE: lucid_testkit::ServerKind = lucid_testkit::ServerKind {
        name: "nope",
        scheme: "nope",
        program: "lucid-no-such-server",
        install_hint: "run scripts/setup.sh",
        args: |_, _| Vec::new(),
        ready: |_| false,
    };
    let Err(err) = std::panic::catch_unwind(|| lucid_testkit::Server::start(&NOPE)) else {
        panic!("starting a missing server must fail");
    };
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("not found") && msg.contains("scripts/setup.sh"),
        "{msg}"
    );
}
