use super::*;

/// Shaped like `kubectl get pods -o yaml`, with the many fields we ignore.
const KUBECTL_LIST: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    annotations:
      kubectl.kubernetes.io/restartedAt: "2026-08-01T10:00:00Z"
    creationTimestamp: "2026-08-01T10:00:01Z"
    generateName: llama-7b-5d8f9c7b6-
    labels:
      app: llama-7b
      pod-template-hash: 5d8f9c7b6
    name: llama-7b-5d8f9c7b6-abcde
    namespace: serving
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: ReplicaSet
      name: llama-7b-5d8f9c7b6
      uid: 0b6c1c7e-1111-2222-3333-444455556666
    resourceVersion: "12345"
    uid: 9a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff
  spec:
    containers:
    - args: ["--model", "/models/llama", "--port", "8000"]
      env:
      - name: POD_IP
        valueFrom:
          fieldRef:
            apiVersion: v1
            fieldPath: status.podIP
      - name: MODEL_NAME
        value: meta-llama/Llama-3.1-8B
      - name: SERVED_MODEL_ALIASES
        value: "llama, llama-8b"
      - name: LORA_ADAPTERS
        value: lora-A,lora-B
      image: vllm/vllm-openai:v0.10.0
      imagePullPolicy: IfNotPresent
      name: vllm
      ports:
      - containerPort: 8000
        name: http
        protocol: TCP
      readinessProbe:
        httpGet:
          path: /health
          port: 8000
      resources:
        limits:
          nvidia.com/gpu: "1"
      volumeMounts:
      - mountPath: /var/run/secrets/kubernetes.io/serviceaccount
        name: kube-api-access-xyz
        readOnly: true
    dnsPolicy: ClusterFirst
    nodeName: node-1
    tolerations:
    - effect: NoExecute
      key: node.kubernetes.io/not-ready
      operator: Exists
      tolerationSeconds: 300
  status:
    conditions:
    - lastProbeTime: null
      lastTransitionTime: "2026-08-01T10:00:05Z"
      status: "True"
      type: Ready
    containerStatuses:
    - containerID: containerd://abc
      image: vllm/vllm-openai:v0.10.0
      name: vllm
      ready: true
      restartCount: 0
      started: true
      state:
        running:
          startedAt: "2026-08-01T10:00:03Z"
    hostIP: 10.0.0.1
    phase: Running
    podIP: 10.244.1.17
    podIPs:
    - ip: 10.244.1.17
    qosClass: Burstable
    startTime: "2026-08-01T10:00:01Z"
- apiVersion: v1
  kind: Pod
  metadata:
    name: qwen-sglang-0
  spec:
    initContainers:
    - name: init
      image: busybox
    containers:
    - name: sidecar
      image: envoy
      ports:
      - containerPort: 15001
    - name: sglang
      image: lmsysorg/sglang
      env:
      - name: MODEL_NAME
        value: Qwen/Qwen2.5-7B
      - name: INFERENCE_ENGINE
        value: SGLang
  status:
    phase: Running
    podIP: 10.244.2.9
- apiVersion: v1
  kind: Pod
  metadata:
    name: pending-pod
    namespace: serving
  spec:
    containers:
    - name: vllm
      env:
      - name: MODEL_NAME
        value: meta-llama/Llama-3.1-8B
  status:
    phase: Pending
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn kubectl_list_gives_one_plan_per_pod_with_an_ip() {
    let plans = parse_pods(KUBECTL_LIST, None);
    let plans = match plans {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        plans,
        vec![
            PodPlan {
                pod: "serving/llama-7b-5d8f9c7b6-abcde".into(),
                listen: SocketAddr::from(([10, 244, 1, 17], 8000)),
                model: "meta-llama/Llama-3.1-8B".into(),
                aliases: vec!["llama".into(), "llama-8b".into()],
                lora: vec!["lora-A".into(), "lora-B".into()],
                engine: EngineKind::Vllm,
                pd: PdSettings::default(),
                steer: Default::default(),
            },
            PodPlan {
                // Namespace defaults; the first containerPort of any container is used.
                pod: "default/qwen-sglang-0".into(),
                listen: SocketAddr::from(([10, 244, 2, 9], 15001)),
                model: "Qwen/Qwen2.5-7B".into(),
                aliases: vec![],
                lora: vec![],
                engine: EngineKind::Sglang,
                pd: PdSettings::default(),
                steer: Default::default(),
            },
        ]
    );
}

#[test]
fn port_flag_overrides_container_port() {
    let plans = parse_pods(KUBECTL_LIST, Some(9100)).unwrap_or_default();
    assert_eq!(plans.len(), 2);
    assert!(plans.iter().all(|p| p.listen.port() == 9100));
}

#[test]
fn multi_document_single_pods_and_default_port() {
    let yaml = r#"---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns1}
spec:
  containers:
  - name: c
    env: [{name: MODEL_NAME, value: m1}]
status: {podIP: 127.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  containers:
  - name: c
    env: [{name: MODEL_NAME, value: m2}]
status: {podIP: "::1"}
"#;
    let plans = parse_pods(yaml, None).unwrap_or_default();
    let got: Vec<(String, String, String)> = plans
        .iter()
        .map(|p| (p.pod.clone(), p.listen.to_string(), p.model.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ns1/a".into(), "127.0.0.2:8000".into(), "m1".into()),
            ("default/b".into(), "[::1]:8000".into(), "m2".into()),
        ]
    );
}

#[test]
fn missing_model_name_is_an_error_naming_the_pod() {
    let yaml = r#"apiVersion: v1
kind: Pod
metadata: {name: nomodel, namespace: x}
spec:
  containers:
  - name: c
    env: [{name: OTHER, value: v}]
status: {podIP: 10.0.0.3}
"#;
    match parse_pods(yaml, None) {
        Err(e @ InvalidPods::NoModel { .. }) => assert!(e.to_string().contains("x/nomodel")),
        other => panic!("expected NoModel, got {other:?}"),
    }
}

#[test]
fn bad_engine_and_bad_yaml_are_errors() {
    let yaml = r#"kind: Pod
metadata: {name: p}
spec:
  containers:
  - env: [{name: MODEL_NAME, value: m}, {name: INFERENCE_ENGINE, value: tgi}]
status: {podIP: 10.0.0.3}
"#;
    assert!(matches!(
        parse_pods(yaml, None),
        Err(InvalidPods::BadEngine { .. })
    ));
    assert!(matches!(
        parse_pods("items: [", None),
        Err(InvalidPods::Yaml(_))
    ));
}

#[test]
fn serve_args_round_trip_the_plan() {
    let plan = PodPlan {
        pod: "ns/p".into(),
        listen: SocketAddr::from(([127, 0, 0, 2], 8000)),
        model: "m".into(),
        aliases: vec!["a".into()],
        lora: vec!["x".into(), "y".into()],
        engine: EngineKind::Sglang,
        pd: PdSettings::default(),
        steer: Default::default(),
    };
    assert_eq!(
        plan.serve_args(),
        [
            "serve",
            "--listen",
            "127.0.0.2:8000",
            "--model",
            "m",
            "--pod",
            "ns/p",
            "--engine",
            "sglang",
            "--alias",
            "a",
            "--lora",
            "x,y"
        ]
    );
}

#[test]
fn pd_env_maps_to_serve_flags() {
    let yaml = r#"apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: p-0, namespace: ns}
  spec:
    containers:
    - env:
      - {name: MODEL_NAME, value: m}
      - {name: PD_ROLE, value: prefill}
      - {name: KV_CONNECTOR, value: nixl}
  status: {podIP: 10.0.0.2}
- kind: Pod
  metadata: {name: d-0, namespace: ns}
  spec:
    containers:
    - env:
      - {name: MODEL_NAME, value: m}
      - {name: INFERENCE_ENGINE, value: sglang}
      - {name: PD_ROLE, value: decode}
      - {name: SGLANG_BOOTSTRAP_PORT, value: 9000}
      - {name: SGLANG_BOOTSTRAP_TIMEOUT_MS, value: "300"}
  status: {podIP: 10.0.0.3}
- kind: Pod
  metadata: {name: agg, namespace: ns}
  spec:
    containers:
    - env:
      - {name: MODEL_NAME, value: m}
      - {name: PD_ROLE, value: ""}
  status: {podIP: 10.0.0.4}
"#;
    let plans = match parse_pods(yaml, Some(8000)) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let args: Vec<Vec<String>> = plans.iter().map(|p| p.serve_args()[9..].to_vec()).collect();
    assert_eq!(
        args,
        vec![
            vec!["--role", "prefill", "--kv-connector", "nixl"],
            vec![
                "--role",
                "decode",
                "--bootstrap-port",
                "9000",
                "--bootstrap-timeout-ms",
                "300"
            ],
            vec![],
        ]
    );
    assert_eq!(plans[2].pd, PdSettings::default());

    for (name, value) in [
        ("PD_ROLE", "both"),
        ("KV_CONNECTOR", "p2p"),
        ("SGLANG_BOOTSTRAP_PORT", "99999"),
        ("SGLANG_BOOTSTRAP_TIMEOUT_MS", "soon"),
    ] {
        let yaml = format!(
            "kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - env: \
             [{{name: MODEL_NAME, value: m}}, {{name: {name}, value: \"{value}\"}}]\n\
             status: {{podIP: 10.0.0.3}}\n"
        );
        match parse_pods(&yaml, None) {
            Err(e @ InvalidPods::BadEnv { .. }) => {
                assert!(e.to_string().contains(name), "{e}")
            }
            other => panic!("{name}: expected BadEnv, got {other:?}"),
        }
    }
}

#[test]
fn mock_delay_and_status_env_make_a_slow_or_failing_pod() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow\nspec:\n  containers:\n  - name: e\n    env:\n    - name: MODEL_NAME\n      value: m\n    - name: MOCK_DELAY_MS\n      value: \"250\"\n    - name: MOCK_STATUS\n      value: \"500\"\nstatus:\n  podIP: 127.0.0.9\n";
    let plans = parse_pods(yaml, None).unwrap();
    assert_eq!(
        plans[0].steer,
        crate::server::Steer {
            delay_ms: Some(250),
            status: Some(500),
            max_running: None,
            sim: None,
        }
    );
    let args = plans[0].serve_args();
    assert!(
        args.windows(2).any(|w| w == ["--delay-ms", "250"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--status", "500"]),
        "{args:?}"
    );
    let bad = yaml.replace("\"500\"", "\"99\"");
    assert!(matches!(
        parse_pods(&bad, None),
        Err(InvalidPods::BadEnv {
            name: "MOCK_STATUS",
            ..
        })
    ));
}

#[test]
fn max_running_env_makes_a_queueing_pod() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: q\nspec:\n  containers:\n  - name: e\n    env:\n    - name: MODEL_NAME\n      value: m\n    - name: MAX_RUNNING\n      value: \"2\"\nstatus:\n  podIP: 127.0.0.9\n";
    let plans = parse_pods(yaml, None).unwrap();
    assert_eq!(plans[0].steer.max_running, Some(2));
    let args = plans[0].serve_args();
    assert!(
        args.windows(2).any(|w| w == ["--max-running", "2"]),
        "{args:?}"
    );
    for bad in ["\"0\"", "\"many\""] {
        let yaml = yaml.replace("\"2\"", bad);
        assert!(
            matches!(
                parse_pods(&yaml, None),
                Err(InvalidPods::BadEnv {
                    name: "MAX_RUNNING",
                    ..
                })
            ),
            "{bad}"
        );
    }
    // Unset: unlimited, and no flag on the command line.
    let plain = yaml.replace("    - name: MAX_RUNNING\n      value: \"2\"\n", "");
    let plans = parse_pods(&plain, None).unwrap();
    assert_eq!(plans[0].steer.max_running, None);
    assert!(!plans[0].serve_args().contains(&"--max-running".to_string()));
}
