//! Send jobs: a `net send` run by the host's peer or a VM's (`Handle::run`), `count`
//! messages through the outbox or one DATA stream, reported as a `SendReport`.

use std::path::PathBuf;
use std::time::Instant;

use libp2p::PeerId;
use micro_os_core::net::{quantile, SendJob, SendReport};
use micro_os_net::MessageType;

use crate::{stream, Error, Handle};

impl Handle {
    /// Runs a `net send`: `count` messages (padded to `size`), or one DATA stream.
    pub async fn run(&self, job: SendJob) -> SendReport {
        let Ok(to) = job.to.parse::<PeerId>() else {
            return SendReport::failed(Error::BadPeer(job.to).to_string());
        };
        let Ok(kind) = serde_json::from_value::<MessageType>(serde_json::Value::String(job.kind.to_uppercase())) else {
            return SendReport::failed(Error::BadKind(job.kind).to_string());
        };
        let started = Instant::now();
        if job.stream || job.file.is_some() {
            if kind != MessageType::Data {
                return SendReport::failed(Error::NotData.to_string());
            }
            let mut report = match self.stream_job(to, &job).await {
                Ok((bytes, sum)) => {
                    SendReport { accepted: true, sent: 1, bytes, checksum: Some(sum), ..Default::default() }
                }
                Err(e) => SendReport::failed(e.to_string()),
            };
            report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            return report;
        }
        let mut state = job.state;
        if let Some(size) = job.size {
            state.extend(std::iter::repeat_n('x', (size as usize).saturating_sub(state.len())));
        }
        let count = job.count.max(1);
        let results = futures_util::future::join_all((0..count).map(|_| self.send(to, kind, state.clone()))).await;
        let mut report = SendReport { sent: u64::from(count), accepted: true, ..Default::default() };
        report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut rtts = Vec::with_capacity(results.len());
        for r in results {
            let why = match r {
                Ok(d) => {
                    report.bytes += d.bytes;
                    rtts.push(d.rtt.as_secs_f64() * 1000.0);
                    if d.ack.accepted {
                        continue;
                    }
                    d.ack.reason.unwrap_or_default()
                }
                Err(e) => e.to_string(),
            };
            report.refused += 1;
            report.accepted = false;
            report.reason.get_or_insert(why);
        }
        rtts.sort_by(f64::total_cmp);
        report.p50_ms = quantile(&rtts, 0.5);
        report.p99_ms = quantile(&rtts, 0.99);
        report
    }

    async fn stream_job(&self, to: PeerId, job: &SendJob) -> Result<(u64, String), Error> {
        match &job.file {
            Some(path) => {
                let p = PathBuf::from(path);
                let unreadable = |source| Error::File { path: path.clone(), source };
                // checksummed first: the header carries it signed, so the receiver checks
                // the file end to end (a file that changes while it is sent is refused)
                let sum = tokio::task::spawn_blocking({
                    let p = p.clone();
                    move || stream::checksum_file(&p)
                })
                .await?
                .map_err(unreadable)?;
                let file = tokio::fs::File::open(&p).await.map_err(unreadable)?;
                let size = file.metadata().await.map_err(unreadable)?.len();
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                let header = stream::StreamHeader { size, xxh3: Some(sum), name };
                self.send_stream(to, header, Box::new(file)).await
            }
            None => {
                use tokio::io::AsyncReadExt;
                let size = job.size.unwrap_or(0);
                let header = stream::StreamHeader { size, xxh3: None, name: None };
                self.send_stream(to, header, Box::new(tokio::io::repeat(0x6d).take(size))).await
            }
        }
    }
}
