//! The echo servers that stand in for the daemons.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{clients::pattern, sockets::abort_on_close};

/// What a server does with each connection after its hello line.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Echo everything back.
    Echo,
    /// Echo the first read, then reset the connection.
    EchoThenReset,
    /// Read a decimal byte count on a line, send that many bytes of
    /// [`DOWNLOAD_SEED`]'s pattern, close: segments as large as the path allows
    /// flow towards the client only; paced to `pace` bytes a second if not 0.
    Download { pace: u64 },
}

/// The seed of the bytes a download server sends.
pub const DOWNLOAD_SEED: u64 = 0xd0d0;

pub fn serve(listen: &[SocketAddr], mode: Mode) -> Result<()> {
    let mut threads = Vec::new();
    for &addr in listen {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        threads.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    // A client that vanishes mid-echo is the client's business.
                    let _ = match mode {
                        Mode::Echo => echo(stream, addr, false),
                        Mode::EchoThenReset => echo(stream, addr, true),
                        Mode::Download { pace } => download(stream, addr, pace),
                    };
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

fn download(stream: TcpStream, local: SocketAddr, pace: u64) -> std::io::Result<()> {
    if pace > 0 {
        crate::sockets::pace(&stream, pace)?;
    }
    let peer = stream.peer_addr()?;
    let mut writer = stream.try_clone()?;
    writer.write_all(format!("hello daemon={local} peer={peer}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let Ok(bytes) = line.trim().parse::<usize>() else {
        return Err(std::io::Error::other(format!("byte count {line:?}")));
    };
    writer.write_all(&pattern(DOWNLOAD_SEED, bytes))?;
    writer.shutdown(Shutdown::Write)?;
    // Until the client closes, so the whole close crosses the dispatcher.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    Ok(())
}
