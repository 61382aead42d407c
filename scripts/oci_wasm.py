#!/usr/bin/env python3
"""Package modelroute.wasm as an OCI image layout that Istio can pull (`oci://...`).

    python3 scripts/oci_wasm.py --wasm target/wasm32-wasip1/release/modelroute.wasm \
        --out target/oci/modelroute --tag 0.1.0

Writes, with the Python standard library only (no container daemon, no registry):

    <out>/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    <out>/index.json                 one manifest, annotated org.opencontainers.image.ref.name=<tag>
    <out>/blobs/sha256/<digest>      the manifest, the runtime config, the wasm module
    <out>.sha256                     the module's sha256 (hex)

Which checksum goes where (istio pkg/wasm/cache.go compares `sha256` with what it fetched):
  - `oci://` URLs: the *manifest digest* (hex, without `sha256:`), or pin `oci://...@sha256:<it>`;
  - `https://` URLs and Envoy `remote` code, and for checking a `file://`/local copy: the
    module's sha256 (the `<out>.sha256` file).

Format: the *oci* variant of the Wasm image spec (solo-io/wasm spec/spec.md, which Istio's
istio-agent fetcher implements in pkg/wasm/imagefetcher.go, `extractOCIArtifactImage`):

    manifest  application/vnd.oci.image.manifest.v1+json
      config  application/vnd.module.wasm.config.v1+json        runtime-config.json
      layers  [0] application/vnd.module.wasm.config.v1+json    runtime-config.json (same blob)
              [1] application/vnd.module.wasm.content.layer.v1+wasm   plugin.wasm (raw, uncompressed)

Istio requires *exactly two layers* for this variant and picks the one with the wasm media
type; the config layer is what the spec calls "a layer specifying configuration for the target
runtime". The same JSON blob is also the manifest's config, so tools that look at
`config.mediaType` (oras, registries' artifact views, OCI 1.1 artifactType inference) see a
Wasm artifact. The runtime config follows the spec's Envoy profile:

    {"type": "envoy_proxy", "abiVersions": ["proxy_abi_version_0_2_1"],
     "config": {"root_ids": ["modelroute"]}}

`abiVersions` lists the proxy-wasm ABI functions the module exports (found in its bytes).

Deterministic: the same module and tag give the same digests. No timestamp is written unless
SOURCE_DATE_EPOCH is set (then `created` = that instant, RFC 3339, in the config and as the
org.opencontainers.image.created annotation).

Publishing (needs a registry; not done by this script):

    oras copy --from-oci-layout target/oci/modelroute:0.1.0 ghcr.io/example/modelroute-wasm:0.1.0
    skopeo copy oci:target/oci/modelroute:0.1.0 docker://ghcr.io/example/modelroute-wasm:0.1.0

then `oci://ghcr.io/example/modelroute-wasm:0.1.0` (with `sha256: <manifest digest hex>`) in a
WasmPlugin, or in an ECDS-delivered Wasm whose remote code istio-agent fetches. Without a
registry, ship the module as a file instead (`code.local.filename`, e.g. from a ConfigMap or a
volume; see deploy/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

OCI_LAYOUT_VERSION = "1.0.0"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
MT_WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_MAGIC = b"\0asm"
ABI_RE = re.compile(rb"proxy_abi_version_[0-9]+_[0-9]+_[0-9]+")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")  # an OCI/Docker tag


def canonical_json(value) -> bytes:
    """Stable bytes for a JSON document: sorted keys, no insignificant whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, annotations: dict | None = None) -> dict:
    d = {"mediaType": media_type, "digest": "sha256:" + sha256_hex(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def created_from_env() -> str | None:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return None
    t = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def runtime_config(module: bytes, root_id: str, created: str | None) -> dict:
    abis = sorted({m.decode() for m in ABI_RE.findall(module)})
    cfg: dict = {"type": "envoy_proxy", "config": {"root_ids": [root_id]}}
    if abis:
        cfg["abiVersions"] = abis
    if created:
        cfg["created"] = created
    return cfg


def build(module: bytes, tag: str, root_id: str, title: str) -> dict[str, bytes | dict]:
    """Returns the blobs (digest hex -> bytes), the manifest bytes and index.json."""
    created = created_from_env()
    config = canonical_json(runtime_config(module, root_id, created))
    annotations = {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.description": "Kthena model routing as an Envoy proxy-wasm HTTP filter",
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    if created:
        annotations["org.opencontainers.image.created"] = created
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": descriptor(MT_WASM_CONFIG, config),
            "layers": [
                descriptor(MT_WASM_CONFIG, config, {"org.opencontainers.image.title": "runtime-config.json"}),
                descriptor(MT_WASM_LAYER, module, {"org.opencontainers.image.title": "plugin.wasm"}),
            ],
            "annotations": annotations,
        }
    )
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [descriptor(MT_MANIFEST, manifest, {"org.opencontainers.image.ref.name": tag})],
    }
    blobs = {sha256_hex(b): b for b in (config, module, manifest)}
    return {"blobs": blobs, "manifest": manifest, "index": index}


def write_layout(out: Path, built: dict) -> None:
    if out.exists():
        # Replace only what is recognisably ours: an OCI layout, or an empty directory.
        if not out.is_dir() or (any(out.iterdir()) and not (out / "oci-layout").is_file()):
            raise SystemExit(f"oci_wasm: {out} exists and is not an OCI image layout; refusing to overwrite")
        shutil.rmtree(out)
    blob_dir = out / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    for digest, data in built["blobs"].items():
        (blob_dir / digest).write_bytes(data)
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}) + b"\n")
    (out / "index.json").write_bytes(canonical_json(built["index"]) + b"\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wasm", required=True, type=Path, help="the proxy-wasm module")
    p.add_argument("--out", required=True, type=Path, help="OCI image layout directory to (re)create")
    p.add_argument("--tag", required=True, help="tag recorded as org.opencontainers.image.ref.name")
    p.add_argument("--root-id", default="modelroute", help="root_id in the runtime config (default: modelroute)")
    p.add_argument("--title", default="modelroute", help="org.opencontainers.image.title (default: modelroute)")
    args = p.parse_args(argv)

    if not TAG_RE.match(args.tag):
        p.error(f"--tag {args.tag!r} is not a valid OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})")
    try:
        module = args.wasm.read_bytes()
    except OSError as e:
        p.error(f"cannot read --wasm: {e}")
    if not module.startswith(WASM_MAGIC):
        p.error(f"{args.wasm} is not a WebAssembly module (no \\0asm magic)")

    built = build(module, args.tag, args.root_id, args.title)
    out = args.out
    write_layout(out, built)
    wasm_sha = sha256_hex(module)
    sha_file = out.parent / (out.name + ".sha256")
    sha_file.write_text(wasm_sha + "\n")

    manifest_digest = "sha256:" + sha256_hex(built["manifest"])
    print(f"OCI image layout: {out} (tag {args.tag})")
    print(f"manifest digest:  {manifest_digest}  (the `sha256` for oci:// URLs)")
    print(f"wasm sha256:      {wasm_sha}  (the `sha256` for https:// and local files; {len(module)} bytes; in {sha_file})")
    print(f"push:             oras copy --from-oci-layout {out}:{args.tag} <registry>/<repo>:{args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
