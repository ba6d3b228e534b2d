//! A reproduction of a connection that the HTTP server leaves unread, independent of ctrip.
//!
//! tiny_http 0.12 (under rouille 3.6) hands each accepted connection to a thread pool.
//! `TaskPool::spawn` starts a new thread only when its count of idle threads is zero, and a
//! woken thread lowers that count only after it takes the queue lock again. So when
//! connections arrive faster than woken threads take the lock, more connections are queued
//! than there are idle threads. Each extra one waits until a thread finishes a connection,
//! which never happens while every client keeps its connection open.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct RaceArgs {
    /// Connections opened at the same moment in each round.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Rounds, each with a new set of connections.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

/// How long a request may wait for its response before it counts as unserved.
const RESPONSE_LIMIT: Duration = Duration::from_secs(1);

/// Serves "ok" with rouille on loopback and counts requests that get no response in time.
pub fn run(args: &RaceArgs) -> anyhow::Result<ExitCode> {
    let server = rouille::Server::new("127.0.0.1:0", |_request| rouille::Response::text("ok"))
        .map_err(|err| anyhow::anyhow!("cannot start the rouille server: {err}"))?
        .pool_size(4);
    let addr = server.server_addr();
    let (_thread, _stop) = server.stoppable();

    let mut unserved_total = 0;
    for round in 0..args.rounds {
        let barrier = Arc::new(Barrier::new(args.clients));
        let threads: Vec<_> = (0..args.clients)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || -> std::io::Result<bool> {
                    barrier.wait();
                    let mut stream = TcpStream::connect(addr)?;
                    stream.set_read_timeout(Some(RESPONSE_LIMIT))?;
                    stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
                    let mut buffer = [0u8; 256];
                    let served = matches!(stream.read(&mut buffer), Ok(read) if read > 0);
                    // Every connection stays open until all reads have timed out, as keep-alive
                    // connections would.
                    std::thread::sleep(RESPONSE_LIMIT + Duration::from_millis(200));
                    Ok(served)
                })
            })
            .collect();
        let mut unserved = 0;
        for thread in threads {
            let served = thread
                .join()
                .expect("client threads do not panic")
                .context("a client connection failed")?;
            if !served {
                unserved += 1;
            }
        }
        println!(
            "round {round}: {unserved} of {} connections got no response within {} ms",
            args.clients,
            RESPONSE_LIMIT.as_millis()
        );
        unserved_total += unserved;
    }
    println!("unserved connections: {unserved_total}");
    Ok(if unserved_total > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
