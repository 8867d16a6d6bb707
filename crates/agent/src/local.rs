//! The local circuit endpoint: the VM's own workloads (a validator replica) reach the VM's
//! circuit members here — JSON lines of `LocalRequest` on loopback inside the VM's network
//! namespace, port `AGENT_CIRCUIT_PORT`, each carrying the token the daemon wrote in the
//! control directory and gave to the circuit's replicas. Only reads, writes and status are
//! served: membership stays the daemon's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use micro_os_circuit::Replicas;
use micro_os_core::circuit::{CircuitCall, LocalRequest};
use micro_os_core::vm::AGENT_CIRCUIT_PORT;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Serves the endpoint once the token file is there (the daemon writes it before the VM
/// starts); without one it serves nothing.
pub async fn serve(circuits: Arc<Replicas>, token_file: PathBuf) {
    let mut token = None;
    for _ in 0..50 {
        if let Some(t) =
            std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        {
            token = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(token) = token else {
        eprintln!("micro-os-agent: no {}: the local circuit endpoint is off", token_file.display());
        return;
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", AGENT_CIRCUIT_PORT)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("micro-os-agent: local circuit endpoint 127.0.0.1:{AGENT_CIRCUIT_PORT}: {e}");
            return;
        }
    };
    let token = Arc::new(token);
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let (circuits, token) = (circuits.clone(), token.clone());
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut reply = answer(&circuits, &token, &line).await.to_string();
                reply.push('\n');
                if w.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn answer(circuits: &Replicas, token: &str, line: &str) -> serde_json::Value {
    let refused = |why: String| serde_json::json!({ "refused": why });
    let req: LocalRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return refused(format!("malformed request: {e}")),
    };
    if !same(&req.token, token) {
        return refused("wrong token".into());
    }
    match req.request {
        call @ (CircuitCall::Read { .. } | CircuitCall::Write { .. } | CircuitCall::Status { .. }) => {
            circuits.call(call).await
        }
        _ => refused("only read, write and status are served here; membership is the daemon's".into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same("abc", "abc"));
        assert!(!super::same("abc", "abd"));
        assert!(!super::same("abc", "abcd"));
    }
}
