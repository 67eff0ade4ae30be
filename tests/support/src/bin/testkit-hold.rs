//! Starts a redis-server through the test kit, prints its pid, and holds it until killed.
//! The test kit's own tests kill this process to show the server dies with it.

fn main() {
    let server = lucid_testkit::redis();
    println!("{}", server.pid().unwrap_or(0));
    loop {
        std::thread::park();
    }
}
