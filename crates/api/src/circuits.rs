//! Circuits: groups of VMs that keep one replicated key-value state (Raft). Keys may
//! contain `/` (`config/batch_size`): the key is the rest of the path, so
//! `/state/config/batch_size` and `/state/config%2Fbatch_size` name the same key.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use micro_os_core::circuit::{validate_key, CircuitView, ReadResult, StateOp, WriteOutcome, WriteResult, MAX_VALUE};

use crate::server::{unexpected, ApiJson, ApiQuery};
use crate::types::{CircuitCreate, MemberRequest, StateQuery, StateWrite, WriteQuery};
use crate::{Action, ApiError, Control, Problem, Reply};

type Ctl = State<Arc<dyn Control>>;

async fn one(c: &Arc<dyn Control>, action: Action) -> Result<Json<CircuitView>, ApiError> {
    match c.dispatch(action).await? {
        Reply::Circuit(x) => Ok(Json(*x)),
        other => Err(unexpected(other)),
    }
}

fn key_of(key: &str) -> Result<(), ApiError> {
    validate_key(key).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn read(c: &Arc<dyn Control>, action: Action) -> Result<Json<ReadResult>, ApiError> {
    match c.dispatch(action).await? {
        Reply::Read(r) => Ok(Json(r)),
        other => Err(unexpected(other)),
    }
}

/// A write's outcome as a status: a compare-and-set that found another version is 409, a
/// delete of an absent key 404; the rest is the committed result.
async fn write(
    c: &Arc<dyn Control>,
    id: String,
    via: Option<String>,
    op: StateOp,
) -> Result<Json<WriteResult>, ApiError> {
    let key = op.key().to_string();
    let expected = match &op {
        StateOp::CompareAndSet { expected_version, .. } => Some(*expected_version),
        _ => None,
    };
    let r = match c.dispatch(Action::CircuitWrite { id: id.clone(), via, op }).await? {
        Reply::Written(r) => r,
        other => return Err(unexpected(other)),
    };
    match r.outcome {
        WriteOutcome::Conflict { current } => {
            let absent = if current == 0 { " (absent)" } else { "" };
            let wanted = expected.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            Err(ApiError::conflict(format!("key {key:?} is at version {current}{absent}, not {wanted}")))
        }
        WriteOutcome::NotFound => Err(ApiError::not_found(format!("key {key:?} not found in circuit {id:?}"))),
        _ => Ok(Json(r)),
    }
}

/// Create a circuit of running VMs (each becomes a voting member) and wait for its first
/// leader.
#[utoipa::path(post, path = "/api/v1/circuits", tag = "circuits", request_body = CircuitCreate,
    responses((status = 201, body = CircuitView), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn create_circuit(
    State(c): Ctl,
    ApiJson(req): ApiJson<CircuitCreate>,
) -> Result<(StatusCode, Json<CircuitView>), ApiError> {
    let Json(v) = one(&c, Action::CreateCircuit(req)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Every circuit, with what its members report.
#[utoipa::path(get, path = "/api/v1/circuits", tag = "circuits",
    responses((status = 200, body = [CircuitView])), security(("bearer" = [])))]
pub async fn list_circuits(State(c): Ctl) -> Result<Json<Vec<CircuitView>>, ApiError> {
    match c.dispatch(Action::ListCircuits).await? {
        Reply::Circuits(v) => Ok(Json(v)),
        other => Err(unexpected(other)),
    }
}

/// A circuit by id or name: leader, term, commit and applied index, each member's lag.
#[utoipa::path(get, path = "/api/v1/circuits/{id}", tag = "circuits",
    params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = CircuitView), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get_circuit(State(c): Ctl, Path(id): Path<String>) -> Result<Json<CircuitView>, ApiError> {
    one(&c, Action::GetCircuit(id)).await
}

/// Remove a circuit: every member leaves and deletes its copy of the state.
#[utoipa::path(delete, path = "/api/v1/circuits/{id}", tag = "circuits",
    params(("id" = String, Path, description = "id or name")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn remove_circuit(State(c): Ctl, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    c.dispatch(Action::RemoveCircuit(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a running VM: it joins as a learner, catches up, then votes.
#[utoipa::path(post, path = "/api/v1/circuits/{id}/members", tag = "circuits",
    params(("id" = String, Path, description = "id or name")), request_body = MemberRequest,
    responses((status = 200, body = CircuitView), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn add_member(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> Result<Json<CircuitView>, ApiError> {
    one(&c, Action::AddCircuitNode { id, vm: req.vm }).await
}

/// Remove a member VM from the membership; it deletes its copy of the state.
#[utoipa::path(delete, path = "/api/v1/circuits/{id}/members/{vm}", tag = "circuits",
    params(("id" = String, Path, description = "id or name"), ("vm" = String, Path, description = "the member VM's name or id")),
    responses((status = 200, body = CircuitView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(c): Ctl,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<CircuitView>, ApiError> {
    one(&c, Action::RemoveCircuitNode { id, vm }).await
}

/// Hand leadership to a voting member.
#[utoipa::path(post, path = "/api/v1/circuits/{id}/leader", tag = "circuits",
    params(("id" = String, Path, description = "id or name")), request_body = MemberRequest,
    responses((status = 200, body = CircuitView), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn transfer_leader(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> Result<Json<CircuitView>, ApiError> {
    one(&c, Action::TransferLeader { id, vm: req.vm }).await
}

/// Every key of the replicated state, linearizable (through the leader) unless `stale`.
#[utoipa::path(get, path = "/api/v1/circuits/{id}/state", tag = "circuits",
    params(("id" = String, Path, description = "id or name"), StateQuery),
    responses((status = 200, body = ReadResult), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn read_state(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> Result<Json<ReadResult>, ApiError> {
    read(&c, Action::CircuitRead { id, key: None, stale: q.stale, via: q.via }).await
}

/// One key, linearizable (through the leader) unless `stale`; 404 when it is absent.
#[utoipa::path(get, path = "/api/v1/circuits/{id}/state/{*key}", tag = "circuits",
    params(("id" = String, Path, description = "id or name"),
        ("key" = String, Path, description = "the key; may contain `/` (config/batch_size)", pattern = "^[!-~]{1,256}$"), StateQuery),
    responses((status = 200, body = ReadResult), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn read_key(
    State(c): Ctl,
    Path((id, key)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> Result<Json<ReadResult>, ApiError> {
    key_of(&key)?;
    read(&c, Action::CircuitRead { id, key: Some(key), stale: q.stale, via: q.via }).await
}

/// Set a key, or compare-and-set it with `expected_version` (409 names the version it is
/// at). Answers once the change is committed.
#[utoipa::path(put, path = "/api/v1/circuits/{id}/state/{*key}", tag = "circuits",
    params(("id" = String, Path, description = "id or name"),
        ("key" = String, Path, description = "the key; may contain `/` (config/batch_size)", pattern = "^[!-~]{1,256}$"), WriteQuery),
    request_body = StateWrite,
    responses((status = 200, body = WriteResult), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn write_key(
    State(c): Ctl,
    Path((id, key)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(req): ApiJson<StateWrite>,
) -> Result<Json<WriteResult>, ApiError> {
    key_of(&key)?;
    if req.value.len() > MAX_VALUE {
        return Err(ApiError::bad_request(format!(
            "value of key {key:?} is {} bytes, more than the limit of {MAX_VALUE} bytes",
            req.value.len()
        )));
    }
    let op = match req.expected_version {
        None => StateOp::Set { key, value: req.value },
        Some(expected_version) => StateOp::CompareAndSet { key, expected_version, value: req.value },
    };
    write(&c, id, q.via, op).await
}

/// Delete a key (404 when it is absent). Answers once the change is committed.
#[utoipa::path(delete, path = "/api/v1/circuits/{id}/state/{*key}", tag = "circuits",
    params(("id" = String, Path, description = "id or name"),
        ("key" = String, Path, description = "the key; may contain `/` (config/batch_size)", pattern = "^[!-~]{1,256}$"), WriteQuery),
    responses((status = 200, body = WriteResult), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_key(
    State(c): Ctl,
    Path((id, key)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WriteQuery>,
) -> Result<Json<WriteResult>, ApiError> {
    key_of(&key)?;
    write(&c, id, q.via, StateOp::Delete { key }).await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use chrono::Utc;
    use micro_os_core::circuit::{CircuitType, StateEntry};
    use tower::ServiceExt;

    use super::*;
    use crate::action::Upload;
    use crate::action::{BoxFuture, ByteStream};
    use crate::types::{DaemonLogsQuery, ImageBuild, ImageImport, LogsQuery, NetSendStream, SendReport};

    /// Records every action and answers with `reply`.
    struct Fake {
        seen: Mutex<Vec<Action>>,
        reply: fn(&Action) -> Result<Reply, ApiError>,
    }

    impl Control for Fake {
        fn dispatch(&self, action: Action) -> BoxFuture<'_, Result<Reply, ApiError>> {
            let r = (self.reply)(&action);
            self.seen.lock().unwrap().push(action);
            Box::pin(async move { r })
        }
        fn logs(&self, _: String, _: LogsQuery) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
            Box::pin(async { Err(ApiError::internal("not in this test")) })
        }
        fn build_image(&self, _: ImageBuild) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
            Box::pin(async { Err(ApiError::internal("not in this test")) })
        }
        /// Counts the upload's bytes and answers with the count as the image's size.
        fn import_image(&self, req: ImageImport, up: Upload) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
            Box::pin(async move {
                let n = drain(up).await?;
                let line = format!(
                    "{{\"event\":\"progress\",\"stage\":\"{}\",\"current\":{n},\"total\":{n}}}\n",
                    req.name.unwrap_or_default()
                );
                let s = futures_util::stream::iter([Ok(axum::body::Bytes::from(line))]);
                Ok(Box::pin(s) as ByteStream)
            })
        }
        /// Counts the upload's bytes and reports them sent.
        fn send_stream(&self, req: NetSendStream, up: Upload) -> BoxFuture<'_, Result<SendReport, ApiError>> {
            Box::pin(async move {
                let bytes = drain(up).await?;
                Ok(SendReport { accepted: true, sent: 1, bytes, reason: Some(req.to), ..Default::default() })
            })
        }
        fn daemon_logs(&self, _: DaemonLogsQuery) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
            Box::pin(async { Err(ApiError::internal("not in this test")) })
        }
        fn events(&self, _: crate::types::EventsQuery) -> BoxFuture<'_, Result<crate::action::EventStream, ApiError>> {
            Box::pin(async { Err(ApiError::internal("not in this test")) })
        }
    }

    async fn drain(up: Upload) -> Result<u64, ApiError> {
        use futures_util::StreamExt;
        let mut body = up.body;
        let mut n = 0;
        while let Some(chunk) = body.next().await {
            n += chunk.map_err(|e| ApiError::bad_request(e.to_string()))?.len() as u64;
        }
        Ok(n)
    }

    fn view() -> CircuitView {
        CircuitView {
            id: "c0ffee".into(),
            name: "validation-cluster".into(),
            kind: CircuitType::Consensus,
            leader: Some("node-1".into()),
            leader_node: Some(1),
            term: 2,
            committed: 7,
            applied: 7,
            last_log: 7,
            health: "ok".into(),
            problems: vec![],
            members: vec![],
            created_at: Utc::now(),
        }
    }

    fn written(outcome: WriteOutcome) -> Result<Reply, ApiError> {
        Ok(Reply::Written(WriteResult { outcome, index: 9, leader: 1 }))
    }

    /// What the daemon would answer: a CAS on `taken` conflicts, a delete of `gone` finds
    /// nothing, everything else succeeds.
    fn daemon(a: &Action) -> Result<Reply, ApiError> {
        match a {
            Action::CreateCircuit(_)
            | Action::GetCircuit(_)
            | Action::AddCircuitNode { .. }
            | Action::RemoveCircuitNode { .. }
            | Action::TransferLeader { .. } => Ok(Reply::Circuit(Box::new(view()))),
            Action::ListCircuits => Ok(Reply::Circuits(vec![view()])),
            Action::RemoveCircuit(_) => Ok(Reply::Done),
            Action::CircuitWrite { op: StateOp::CompareAndSet { key, .. }, .. } if key == "taken" => {
                written(WriteOutcome::Conflict { current: 5 })
            }
            Action::CircuitWrite { op: StateOp::CompareAndSet { key, .. }, .. } if key == "absent" => {
                written(WriteOutcome::Conflict { current: 0 })
            }
            Action::CircuitWrite { op: StateOp::Delete { key }, .. } if key == "gone" => {
                written(WriteOutcome::NotFound)
            }
            Action::CircuitWrite { op: StateOp::Delete { .. }, .. } => written(WriteOutcome::Deleted { version: 3 }),
            Action::CircuitWrite { .. } => written(WriteOutcome::Stored { version: 4, checksum: "ab".into() }),
            Action::CircuitRead { .. } => Ok(Reply::Read(ReadResult {
                entries: vec![StateEntry { key: "k".into(), value: "v".into(), version: 1, checksum: "cd".into() }],
                node: 2,
                applied: 7,
                stale: false,
            })),
            other => Err(ApiError::internal(format!("not in this test: {other:?}"))),
        }
    }

    /// Sends one request; returns the status, the body and the actions it dispatched.
    async fn send(method: &str, uri: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value, Vec<String>) {
        let fake = Arc::new(Fake { seen: Mutex::new(vec![]), reply: daemon });
        let app = crate::router(
            fake.clone(),
            crate::ServerConfig { token: "t".into(), deny: vec![], forward: None, host: None },
        );
        let req = Request::builder().method(method).uri(uri).header("Authorization", "Bearer t");
        let req = match body {
            Some(b) => req.header("Content-Type", "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let res = app.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let json = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let seen = fake.seen.lock().unwrap().iter().map(|a| format!("{a:?}")).collect();
        (status, json, seen)
    }

    /// One case: the request, the status it gets, what the daemon was asked (a substring of
    /// the action's Debug, or "" for nothing at all) and a substring of the body.
    async fn check(method: &str, uri: &str, body: Option<serde_json::Value>, status: u16, action: &str, says: &str) {
        let (got, json, seen) = send(method, uri, body).await;
        assert_eq!(got, status, "{method} {uri}: {json}");
        match (action, seen.as_slice()) {
            ("", []) => {}
            ("", more) => panic!("{method} {uri} reached the daemon: {more:?}"),
            (want, [one]) => assert!(one.contains(want), "{method} {uri} dispatched {one}, not {want}"),
            (_, more) => panic!("{method} {uri} dispatched {more:?}"),
        }
        assert!(json.to_string().contains(says), "{method} {uri}: {json} lacks {says:?}");
    }

    #[tokio::test]
    async fn circuits_and_members() {
        let v = |vm: &str| Some(serde_json::json!({ "vm": vm }));
        let create = serde_json::json!({"name": "vc", "nodes": ["a", "b", "c"], "type": "consensus"});
        check("POST", "/api/v1/circuits", Some(create), 201, "CreateCircuit", "validation-cluster").await;
        check("GET", "/api/v1/circuits", None, 200, "ListCircuits", "\"leader\":\"node-1\"").await;
        check("GET", "/api/v1/circuits/vc", None, 200, "GetCircuit(\"vc\")", "c0ffee").await;
        check("DELETE", "/api/v1/circuits/vc", None, 204, "RemoveCircuit(\"vc\")", "null").await;
        check("POST", "/api/v1/circuits/vc/members", v("d"), 200, "AddCircuitNode { id: \"vc\", vm: \"d\" }", "").await;
        check("DELETE", "/api/v1/circuits/vc/members/d", None, 200, "RemoveCircuitNode { id: \"vc\", vm: \"d\" }", "")
            .await;
        check("POST", "/api/v1/circuits/vc/leader", v("b"), 200, "TransferLeader { id: \"vc\", vm: \"b\" }", "").await;
        let extra = Some(serde_json::json!({"vm": "b", "force": true}));
        check("POST", "/api/v1/circuits/vc/leader", extra, 400, "", "unknown field `force`").await;
    }

    #[tokio::test]
    async fn state_reads_and_writes() {
        let set = |v: &str| Some(serde_json::json!({ "value": v }));
        let cas = |v: &str, n: u64| Some(serde_json::json!({ "value": v, "expected_version": n }));
        // a key with slashes, as a path or percent-encoded
        let want = "op: Set { key: \"config/batch_size\", value: \"64\" }";
        check("PUT", "/api/v1/circuits/vc/state/config/batch_size", set("64"), 200, want, "\"version\":4").await;
        check("PUT", "/api/v1/circuits/vc/state/config%2Fbatch_size", set("64"), 200, want, "stored").await;
        let want = "via: Some(\"n2\"), op: CompareAndSet { key: \"k\", expected_version: 4, value: \"x\" }";
        check("PUT", "/api/v1/circuits/vc/state/k?via=n2", cas("x", 4), 200, want, "stored").await;
        // a compare-and-set that lost says at which version the key is
        let conflict = "key \\\"taken\\\" is at version 5, not 3";
        check("PUT", "/api/v1/circuits/vc/state/taken", cas("x", 3), 409, "CompareAndSet", conflict).await;
        let conflict = "key \\\"absent\\\" is at version 0 (absent), not 1";
        check("PUT", "/api/v1/circuits/vc/state/absent", cas("x", 1), 409, "CompareAndSet", conflict).await;
        check("DELETE", "/api/v1/circuits/vc/state/a/b", None, 200, "Delete { key: \"a/b\" }", "deleted").await;
        let gone = "key \\\"gone\\\" not found in circuit \\\"vc\\\"";
        check("DELETE", "/api/v1/circuits/vc/state/gone", None, 404, "Delete", gone).await;
        let want = "CircuitRead { id: \"vc\", key: Some(\"a/b\"), stale: true, via: Some(\"n3\") }";
        check("GET", "/api/v1/circuits/vc/state/a/b?stale=true&via=n3", None, 200, want, "\"applied\":7").await;
        let want = "CircuitRead { id: \"vc\", key: None, stale: false, via: None }";
        check("GET", "/api/v1/circuits/vc/state", None, 200, want, "entries").await;
    }

    #[tokio::test]
    async fn bad_input_never_reaches_the_daemon() {
        let big = Some(serde_json::json!({ "value": "x".repeat(MAX_VALUE + 1) }));
        check("PUT", "/api/v1/circuits/vc/state/k", big, 400, "", "more than the limit of 262144 bytes").await;
        let ok = Some(serde_json::json!({ "value": "x".repeat(MAX_VALUE) }));
        check("PUT", "/api/v1/circuits/vc/state/k", ok, 200, "Set", "stored").await;
        let v = Some(serde_json::json!({ "value": "1" }));
        check("PUT", "/api/v1/circuits/vc/state/a%20b", v.clone(), 400, "", "is not a state key").await;
        check("GET", "/api/v1/circuits/vc/state/a%20b", None, 400, "", "is not a state key").await;
        check("DELETE", "/api/v1/circuits/vc/state/a%20b", None, 400, "", "is not a state key").await;
        check("PUT", "/api/v1/circuits/vc/state/k?stale=true", v, 400, "", "query is not valid").await;
        let extra = Some(serde_json::json!({ "value": "1", "version": 2 }));
        check("PUT", "/api/v1/circuits/vc/state/k", extra, 400, "", "unknown field `version`").await;
    }

    #[test]
    fn the_document_names_the_key_and_every_method() {
        let (_, doc) = crate::server::api_parts();
        let doc = serde_json::to_value(&doc).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.keys().all(|p| !p.contains('*')), "{:?}", paths.keys());
        let state = &paths["/api/v1/circuits/{id}/state/{key}"];
        for method in ["get", "put", "delete"] {
            let params = state[method]["parameters"].as_array().unwrap();
            let key = params.iter().find(|p| p["name"] == "key").unwrap_or_else(|| panic!("{method}: {params:?}"));
            assert_eq!(key["in"], "path");
            assert_eq!(state[method]["tags"][0], "circuits");
        }
        assert_eq!(
            state["put"]["responses"]["409"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        for (path, method) in [
            ("/api/v1/circuits", "post"),
            ("/api/v1/circuits", "get"),
            ("/api/v1/circuits/{id}", "get"),
            ("/api/v1/circuits/{id}", "delete"),
            ("/api/v1/circuits/{id}/members", "post"),
            ("/api/v1/circuits/{id}/members/{vm}", "delete"),
            ("/api/v1/circuits/{id}/leader", "post"),
            ("/api/v1/circuits/{id}/state", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path} is not documented");
        }
        let query = &paths["/api/v1/circuits/{id}/state"]["get"]["parameters"];
        let places: Vec<_> = query
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
            .collect();
        assert_eq!(places, [("id", "path"), ("stale", "query"), ("via", "query")]);
    }

    /// (The fake daemon is here.) Uploads reach the daemon as bytes; a JSON body naming a
    /// host path — the old forms of import and send — is refused before the daemon sees it.
    #[tokio::test]
    async fn uploads_are_bytes_and_json_naming_a_path_is_refused() {
        let upload = |uri: &str, kind: Option<&str>, body: Vec<u8>| {
            let fake = Arc::new(Fake { seen: Mutex::new(vec![]), reply: daemon });
            let app =
                crate::router(fake, crate::ServerConfig { token: "t".into(), deny: vec![], forward: None, host: None });
            let mut req = Request::builder().method("POST").uri(uri).header("Authorization", "Bearer t");
            if let Some(k) = kind {
                req = req.header("Content-Type", k);
            }
            let req = req.body(Body::from(body)).unwrap();
            async move {
                let res = app.oneshot(req).await.unwrap();
                let status = res.status().as_u16();
                let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        // two MiB: over the JSON limit, under the upload limit
        let big = vec![7u8; 2 << 20];
        let (st, body) = upload("/api/v1/images/import?name=app", Some("application/x-tar"), big.clone()).await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains(&format!("\"current\":{}", 2 << 20)) && body.contains("app"), "{body}");
        let (st, body) = upload("/api/v1/net/send/stream?to=peer&name=f.bin", None, big).await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains(&format!("\"bytes\":{}", 2 << 20)), "{body}");
        // the old JSON forms: refused as JSON (415) or for the field the API no longer has (400)
        let shadow = serde_json::json!({"path": "/etc/shadow", "name": "x"}).to_string().into_bytes();
        let (st, body) = upload("/api/v1/images/import", Some("application/json"), shadow).await;
        assert_eq!(st, 415, "{body}");
        let (st, ..) =
            send("POST", "/api/v1/images/build", Some(serde_json::json!({"from_dir": "/etc", "name": "x"}))).await;
        assert_eq!(st, 400);
        let (st, ..) = send(
            "POST",
            "/api/v1/net/send",
            Some(serde_json::json!({"to": "p", "type": "DATA", "file": "/etc/shadow"})),
        )
        .await;
        assert_eq!(st, 400);
        // a declared length over the upload limit is refused before any byte is read
        let fake = Arc::new(Fake { seen: Mutex::new(vec![]), reply: daemon });
        let app =
            crate::router(fake, crate::ServerConfig { token: "t".into(), deny: vec![], forward: None, host: None });
        let req = Request::builder()
            .method("POST")
            .uri("/api/v1/images/import")
            .header("Authorization", "Bearer t")
            .header("Content-Length", (crate::server::UPLOAD_LIMIT + 1).to_string())
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status().as_u16(), 413);
    }
}
