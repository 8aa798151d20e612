//! The baseline: the least an HTTP responder on monoio can do (find the end of
//! the head, write a fixed response), with the same SO_REUSEPORT-per-thread
//! shape as hearth. hearth's HTTP layer is measured against this ceiling.

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

const BODY: &str = r#"{"versions":["r0.0.1","r0.1.0","r0.2.0","r0.3.0","r0.4.0","r0.5.0","r0.6.0","r0.6.1","v1.1","v1.2","v1.3","v1.4","v1.5","v1.6","v1.7","v1.8","v1.9","v1.10","v1.11","v1.12"],"unstable_features":{}}"#;

pub fn run(listen: &str, threads: usize) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = listen.parse()?;
    let response: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            BODY.len(),
            BODY
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        handles.push(std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let opts = ListenerOpts::default().reuse_port(true);
                let listener = TcpListener::bind_with_config(addr, &opts).expect("bind");
                while let Ok((s, _)) = listener.accept().await {
                    monoio::spawn(serve(s, response));
                }
            })
        }));
    }
    eprintln!("raw responder on http://{addr}");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

async fn serve(mut s: TcpStream, response: &'static [u8]) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    loop {
        let (res, b) = s.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Answer every complete request head in the buffer (pipelining).
        let mut answered = 0;
        while let Some(pos) = find_head_end(&buf) {
            buf.drain(..pos);
            answered += 1;
        }
        if answered > 0 {
            let mut out = Vec::with_capacity(response.len() * answered);
            for _ in 0..answered {
                out.extend_from_slice(response);
            }
            let (res, _) = s.write_all(out).await;
            if res.is_err() {
                return;
            }
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
