//! The PD steps of a request on a mock pod: admission (what a real prefill or decode engine
//! requires of the body), then the step itself after the run slot (a prefill publishing its KV
//! blocks, a decode pulling them or meeting its SGLang bootstrap room), and the KV endpoint
//! other pods pull from. The checks are `engine`'s, the KV registry `pd`'s.

use hyper::Response;
use serde_json::{Map, Value};

use std::time::Duration;

use super::body::{error_response, json_response, MockBody};
use super::{PdNote, State};
use crate::engine::{self, EngineKind, KvTransferParams, Reply, Role};
use crate::pd;

/// The PD work a request needs after admission.
pub(super) enum PdStep {
    /// Aggregated, or a role that needs nothing extra.
    Nothing,
    /// vLLM prefill asked for a remote decode: hand out fresh KV blocks.
    IssueKv,
    /// vLLM decode without `kv_transfer_params`: prefill locally.
    LocalPrefill,
    /// vLLM decode: pull the KV blocks first.
    PullKv(engine::RemoteKv),
    /// SGLang decode: wait for the prefill's bootstrap room.
    WaitRoom(engine::Bootstrap),
}

/// Check the PD fields the pod's role and engine require; `Err` is the 400 reply.
pub(super) fn admit_pd(
    state: &State,
    body: &Map<String, Value>,
    stream: bool,
) -> Result<PdStep, Reply> {
    let bad = |msg: String| engine::error_reply(400, &msg);
    let settings = &state.pd_settings;
    let Some(role) = settings.role else {
        return Ok(PdStep::Nothing);
    };
    match (state.served.engine, role) {
        (EngineKind::Vllm, _) if !settings.kv_connector.transfers_kv() => Ok(PdStep::Nothing),
        (EngineKind::Vllm, Role::Prefill) => {
            // A streaming answer has nowhere to carry kv_transfer_params.
            let remote_decode = engine::check_prefill_kv(body).map_err(bad)?;
            Ok(if remote_decode && !stream {
                PdStep::IssueKv
            } else {
                PdStep::Nothing
            })
        }
        (EngineKind::Vllm, Role::Decode) => {
            Ok(match engine::check_decode_kv(body).map_err(bad)? {
                Some(remote) => PdStep::PullKv(remote),
                None => PdStep::LocalPrefill,
            })
        }
        (EngineKind::Sglang, Role::Prefill) => {
            let b = engine::check_bootstrap(body).map_err(bad)?;
            let ip = state.listen.ip();
            if !ip.is_unspecified() && !engine::host_is(&b.host, ip) {
                return Err(bad(format!(
                    "bootstrap_host {:?} is not this prefill pod's IP {ip}",
                    b.host
                )));
            }
            state.pd.register_room(b.room);
            Ok(PdStep::Nothing)
        }
        (EngineKind::Sglang, Role::Decode) => Ok(PdStep::WaitRoom(
            engine::check_bootstrap(body).map_err(bad)?,
        )),
    }
}

/// Do the PD step (KV pull, bootstrap wait, block hand-out), then answer.
pub(super) async fn run_pd(
    state: &State,
    prepared: &engine::Prepared,
    step: PdStep,
    note: &mut PdNote,
) -> Reply {
    match step {
        PdStep::Nothing => prepared.reply(&state.stamp(), None),
        PdStep::IssueKv => {
            let params = KvTransferParams::issued(
                &state.pd.engine_id,
                state.pd.allocate_blocks(),
                &state.listen.ip().to_string(),
                state.listen.port(),
            );
            prepared.reply(&state.stamp(), Some(&params))
        }
        PdStep::LocalPrefill => {
            note.local_prefill = Some(true);
            prepared.reply(&state.stamp(), None)
        }
        PdStep::PullKv(remote) => match pd::pull_kv(&remote).await {
            Ok(()) => {
                note.kv_pulled_from = Some(format!("{}:{}", remote.host, remote.port));
                prepared.reply(&state.stamp(), None)
            }
            Err(msg) => engine::error_reply(500, &msg),
        },
        PdStep::WaitRoom(bootstrap) => {
            let timeout = Duration::from_millis(state.pd_settings.bootstrap_timeout_ms);
            match pd::wait_for_room(&bootstrap, timeout).await {
                Ok(ms) => {
                    note.bootstrap_waited_ms = Some(ms);
                    prepared.reply(&state.stamp(), None)
                }
                Err(msg) => engine::error_reply(500, &msg),
            }
        }
    }
}

/// `GET /mock/kv?engine=E&ids=1,2,3`: 200 only if this pod issued exactly those blocks.
pub(super) fn kv_blocks(state: &State, query: &str) -> Response<MockBody> {
    match pd::parse_kv_query(query) {
        Some((engine_id, ids)) if state.pd.holds(&engine_id, &ids) => json_response(
            200,
            serde_json::json!({"engine_id": engine_id, "block_ids": ids}).to_string(),
        ),
        Some((engine_id, ids)) => error_response(
            404,
            &format!("engine {engine_id:?} holds no KV blocks {ids:?}"),
        ),
        None => error_response(404, "expected /mock/kv?engine=ID&ids=1,2,3"),
    }
}
