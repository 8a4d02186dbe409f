//! The echo servers that stand in for the daemons.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::sockets::abort_on_close;

pub fn serve(listen: &[SocketAddr], reset: bool) -> Result<()> {
    let mut threads = Vec::new();
    for &addr in listen {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        threads.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    // A client that vanishes mid-echo is the client's business.
                    let _ = echo(stream, addr, reset);
                });
            }
        }));
    }
    println!(
        "serving {}",
        listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn echo(mut stream: TcpStream, local: SocketAddr, reset: bool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    stream.write_all(format!("hello daemon={local} peer={peer}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
        if reset {
            // Let the echo leave before the RST, which discards unsent data.
            thread::sleep(Duration::from_millis(20));
            return abort_on_close(&stream);
        }
    }
}
