//! `ingest lookup` against a local stub of CloudTrail's LookupEvents (moto does not implement
//! it): pagination, a throttled request retried, the 2-requests-per-second pace, and the second
//! run starting at the checkpoint minus the overlap window.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use trailguard_tests::{read_topic, Run};

#[derive(Default)]
struct Stub {
    /// (when, request body) of every LookupEvents call.
    calls: Vec<(Instant, Value)>,
}

fn event(i: usize) -> Value {
    let record = json!({
        "eventVersion": "1.08", "eventTime": "2024-05-01T10:00:00Z", "eventSource": "iam.amazonaws.com",
        "eventName": "CreateUser", "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
        "eventID": format!("00000000-0000-4000-8000-{i:012}"),
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111111111111:user/admin"},
        "requestParameters": {"userName": format!("u{i}")}
    });
    json!({"EventId": format!("00000000-0000-4000-8000-{i:012}"), "EventName": "CreateUser",
           "EventTime": 1_714_557_600.0, "CloudTrailEvent": record.to_string()})
}

async fn lookup_events(
    State(stub): State<Arc<Mutex<Stub>>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let call = {
        let Ok(mut stub) = stub.lock() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
        };
        stub.calls.push((Instant::now(), request.clone()));
        stub.calls.len()
    };
    if !target.ends_with("LookupEvents") {
        return (
            StatusCode::BAD_REQUEST,
            json!({"__type": "UnknownOperationException"}).to_string(),
        );
    }
    if call == 1 {
        return (
            StatusCode::BAD_REQUEST,
            json!({"__type": "ThrottlingException", "message": "Rate exceeded"}).to_string(),
        );
    }
    // Three pages of two events: tokens p2, p3.
    let page = match request.get("NextToken").and_then(Value::as_str) {
        None => 1,
        Some("p2") => 2,
        Some(_) => 3,
    };
    let events: Vec<Value> = (0..2).map(|i| event((page - 1) * 2 + i)).collect();
    let mut response = json!({ "Events": events });
    if page < 3 {
        response["NextToken"] = json!(format!("p{}", page + 1));
    }
    (StatusCode::OK, response.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_throttling_pace_and_overlap() -> Result<()> {
    let stub = Arc::new(Mutex::new(Stub::default()));
    let app = Router::new()
        .route("/", post(lookup_events))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let run = Run::new("lookup")?;
    let ingest = |run: &Run| -> Result<Value> {
        let out = run
            .command(
                "ingest",
                &[
                    "lookup",
                    "--once",
                    "--summary",
                    "json",
                    "--region",
                    "us-east-1",
                    "--aws-endpoint",
                    &endpoint,
                ],
            )?
            .output()?;
        ensure!(
            out.status.success(),
            "ingest lookup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let first = tokio::task::block_in_place(|| ingest(&run))?;
    assert_eq!(first["published"], 6, "{first}");
    assert_eq!(first["api_calls"], 3, "{first}");
    assert_eq!(first["throttles"], 1, "{first}");
    let activities = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |r| r.len() >= 6,
    )?;
    assert_eq!(activities.len(), 6);

    let calls = stub.lock().map(|s| s.calls.clone()).unwrap_or_default();
    assert_eq!(calls.len(), 4, "one throttled call and three pages");
    // Never faster than 2 requests per second (the throttled call backs off on top of that).
    // The stub sees arrivals, which carry each request's own latency (a new connection, a
    // loaded machine): the pace is judged over the whole run, and a single gap may be short by
    // that jitter only. (The bucket's own spacing is unit-tested in ingest's lookup module.)
    let span = calls[calls.len() - 1].0 - calls[0].0;
    assert!(
        span >= Duration::from_millis(490 * (calls.len() as u64 - 1)),
        "{} requests within {span:?}: faster than 2 a second",
        calls.len()
    );
    for pair in calls.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(250),
            "requests closer than 0.25 s"
        );
    }
    // The first run reads the 7-day backfill.
    let start = calls[1].1["StartTime"].as_f64().unwrap_or_default();
    let end = calls[1].1["EndTime"].as_f64().unwrap_or_default();
    assert!(
        (end - start - 7.0 * 86_400.0).abs() < 5.0,
        "backfill window {start}..{end}"
    );

    // The second run starts at the checkpoint minus the 30-minute overlap.
    let second = tokio::task::block_in_place(|| ingest(&run))?;
    assert_eq!(second["api_calls"], 3, "{second}");
    let calls = stub.lock().map(|s| s.calls.clone()).unwrap_or_default();
    let second_start = calls[4].1["StartTime"].as_f64().unwrap_or_default();
    assert!(
        (end - 1800.0 - second_start).abs() < 2.0,
        "second window starts at {second_start}, first ended {end}"
    );
    Ok(())
}

impl Clone for Stub {
    fn clone(&self) -> Self {
        Stub {
            calls: self.calls.clone(),
        }
    }
}

/// Answers one page of two events, except in eu-north-1, where access is denied.
async fn denied_in_one_region(
    State(stub): State<Arc<Mutex<Stub>>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if let Ok(mut stub) = stub.lock() {
        stub.calls.push((Instant::now(), request));
    }
    if auth.contains("/eu-north-1/") {
        return (
            StatusCode::BAD_REQUEST,
            json!({"__type": "AccessDeniedException", "message": "not authorized to perform cloudtrail:LookupEvents"}).to_string(),
        );
    }
    (
        StatusCode::OK,
        json!({ "Events": [event(100), event(101)] }).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_in_one_region_spares_the_others() -> Result<()> {
    let stub = Arc::new(Mutex::new(Stub::default()));
    let app = Router::new()
        .route("/", post(denied_in_one_region))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let run = Run::new("lookup-denied")?;
    let args = [
        "lookup",
        "--once",
        "--region",
        "eu-north-1",
        "--region",
        "us-east-1",
        "--aws-endpoint",
        &endpoint,
    ];
    let out = tokio::task::block_in_place(|| {
        run.command("ingest", &args)?
            .output()
            .map_err(anyhow::Error::from)
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a denied region must fail a --once run"
    );
    assert!(
        stderr.contains("eu-north-1") && stderr.contains("AccessDeniedException"),
        "the error names the stream and the cause: {stderr}"
    );
    // Not retried: access denied is not transient.
    let calls = stub.lock().map(|s| s.calls.len()).unwrap_or_default();
    assert_eq!(calls, 2, "one denied call, one page from us-east-1");
    // us-east-1 was still read, and its checkpoint saved.
    let activities = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |r| r.len() >= 2,
    )?;
    assert_eq!(activities.len(), 2);
    let checkpoints = read_topic(
        &run.topic("checkpoints"),
        Duration::from_secs(30),
        Duration::from_secs(1),
        |r| !r.is_empty(),
    )?;
    let keys: Vec<&str> = checkpoints.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["lookup://us-east-1"]);
    Ok(())
}
