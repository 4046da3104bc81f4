"""`make demo`: the local stack, the main job (an HLS ladder paid through the escrow), an
embedding and a generation, then one probe job through each door, their timelines and outputs.

Starts the stack (or uses the one running here), makes short clips with FFmpeg, transcodes
one to a verified HLS ladder with `proofline transcode submit` (funding the escrow on anvil
and showing what the media pool was paid), embeds six sentences and generates a short text
with `proofline infer`, drops a clip into the intake bucket and submits it over HTTP with the
CLI, follows every job to the end, and copies the verified outputs under .proofline/demo/.
Exits non-zero unless every job settled.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import requests
from rich.console import Console

from chalicelib.jobs.lifecycle import derive_job_id
from proofline import clips
from proofline.client import Api, ApiError
from proofline.common import dev_identity

console = Console()
DEMO = Path(".proofline/demo")


def cli(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proofline.cli", *args], text=True,
                          capture_output=capture, check=False)


def main() -> int:
    console.rule("[bold]Proofline demo")
    up = cli("dev", "up", "--json", capture=True)
    if up.returncode != 0:
        console.print(up.stderr)
        return 1
    stack = json.loads(up.stdout)
    console.print(f"stack: API {stack['api_url']}   AWS endpoint {stack['aws_endpoint']}")
    try:
        return run(stack)
    finally:
        if stack["started"] and "--keep" not in sys.argv:
            cli("dev", "down")
            console.print("[dim]stack stopped (run `make demo ARGS=--keep` or "
                          "`proofline dev up` to keep one running)[/dim]")


# The jobs whose pages the demo ends with: the transcode, and the paid probe.
PAGES: list[str] = []


def run(stack: dict) -> int:
    DEMO.mkdir(parents=True, exist_ok=True)
    if transcode(stack) != 0:
        return 1
    if infer() != 0:
        return 1
    clip = clips.make_clip(DEMO / "clip.mp4", seconds=3.0, width=320, height=240)
    console.print(f"made {clip} ({clip.stat().st_size} bytes, 3 s 320x240 H.264 + AAC)")

    console.rule("door 1: S3 drop")
    s3 = boto3.client("s3", endpoint_url=stack["aws_endpoint"], region_name=stack["region"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket, key = "proofline-local-intake", f"intake/media_probe/demo-{int(time.time())}.mp4"
    s3.upload_file(str(clip), bucket, key)
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    dropped = derive_job_id(f"s3:{bucket}/{key}@{etag}")   # the same object is always this job
    console.print(f"put s3://{bucket}/{key} → job {dropped}")
    _await_created(_api(stack), dropped)
    cli("jobs", "watch", dropped)

    console.rule("door 2: HTTP API, through the CLI")
    submitted = cli("submit", "--kind", "media_probe", "--input", str(clip), "--json", capture=True)
    if submitted.returncode != 0:
        console.print(submitted.stderr)
        return 1
    http_job = json.loads(submitted.stdout)["job_id"]
    cli("jobs", "watch", http_job)

    console.rule("door 2 again, paid through the escrow on anvil, in the stablecoin")
    paid = cli("submit", "--kind", "media_probe", "--input", str(clip), "--payment-policy",
               "escrow_before_start", "--payment-token", "PUSD", "--max-price", "0.01",
               "--json", capture=True)
    if paid.returncode != 0:
        console.print(paid.stderr)
        return 1
    escrow_job = json.loads(paid.stdout)["job_id"]
    PAGES.append(escrow_job)
    cli("jobs", "watch", escrow_job)
    _money(_api(stack).job(escrow_job))

    console.rule("outputs")
    ok = True
    for job_id in (dropped, http_job, escrow_job):
        job = _api(stack).job(job_id)
        ok &= job["state"] == "settled"
        for output in job["outputs"]:
            local = DEMO / "outputs" / job_id / output["name"]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(requests.get(output["download_url"], timeout=10).content)
            report = json.loads(local.read_text())
            console.print(f"{job_id} [green]{job['state']}[/green]\n  {output['uri']}\n"
                          f"  copied to {local}: {report['format_name']}, "
                          f"{report['duration_s']:.2f} s, {len(report['streams'])} streams")
        if job["state"] != "settled":
            console.print(f"{job_id} [red]{job['state']}[/red] {job.get('reason')}")
    return 0 if (ok and status(stack)) else 1


def status(stack: dict) -> bool:
    """The network's status page, and what it counted of the demo's jobs."""
    console.rule("status")
    figures = requests.get(f"{stack['api_url']}/status.json", timeout=30).json()
    for kind, shown in figures["classes"].items():
        hour = shown["last_hour"]
        if hour["settled"] or hour["failed"] or hour["rejected"]:
            costs = ", ".join(f"{amount} {symbol}" for symbol, amount
                              in hour["cost_per_validated_result"].items() if amount)
            console.print(f"{kind}: {hour['settled']} settled, {hour['failed']} failed, "
                          f"{hour['rejected']} rejected in the last hour"
                          + (f"; cost per validated result {costs}" if costs else ""))
    console.print(f"status page: [bold]{stack['api_url']}/status[/bold] "
                  "(kept up with `make demo ARGS=--keep`)")
    if stack["started"] and "--keep" not in sys.argv:
        console.print("job pages: " + ", ".join(PAGES) + " (with `make demo ARGS=--keep` the "
                      "stack stays up and the demo ends with a link to each)")
        return bool(figures["classes"]["media_probe"]["last_hour"]["settled"])
    console.print("job pages (each link signs a browser in as the demo's client and opens "
                  "once, within two minutes; `.venv/bin/proofline ui JOB` makes another):")
    for job_id in PAGES:
        link = _api(stack).page_link(job_id)["url"]
        console.print(f"  {job_id}: {link}", soft_wrap=True)
    return bool(figures["classes"]["media_probe"]["last_hour"]["settled"])


def transcode(stack: dict) -> int:
    console.rule("the main job: an HLS ladder, every segment verified, paid through the escrow")
    source = clips.make_gop_clip(DEMO / "source.mp4", seconds=8.0, gop=100, width=854,
                                 height=480, fps=25)
    console.print(f"made {source} (8 s 854x480 H.264 + AAC, keyframes every 4 s)")
    quoted = cli("transcode", "quote", "--input", str(source), "--profile", "hls-abr",
                 "--token", "PUSD", "--json", capture=True)
    if quoted.returncode != 0:
        console.print(quoted.stderr)
        return 1
    charge = json.loads(quoted.stdout)["charge"]
    console.print(f"quoted: [bold]{charge['price']} PUSD[/bold] for {charge['renditions']} "
                  f"(compute {charge['breakdown']['compute']}, storage "
                  f"{charge['breakdown']['storage']}, transfer {charge['breakdown']['transfer']})")
    done = cli("transcode", "submit", "--input", str(source), "--profile", "hls-abr",
               "--output", str(DEMO / "hls"), "--payment-policy", "escrow_before_start",
               "--payment-token", "PUSD", "--max-price", "0.05", "--json", capture=True)
    if done.returncode != 0:
        console.print(done.stderr)
        return 1
    job = _api(stack).job(json.loads(done.stdout)["job_id"])
    console.print(f"package in {DEMO / 'hls'}: {job['job_id']} {job['state']}")
    PAGES.append(job["job_id"])
    _money(job)
    console.print("the pool and the client collect with `proofline settle withdraw --token PUSD`"
                  " (`--as pool` for the pool)")
    return 0


def _money(job: dict) -> None:
    """Quote, charge and change, in one unit: the stablecoin the job was paid in."""
    paid = job["payment"]
    console.print(f"{job['job_id']}: escrowed {paid['max_price']} {paid['symbol']}, charged "
                  f"[bold]{paid['charged']}[/bold] (fee {paid['fee']}), refunded "
                  f"[bold]{paid['refunded']}[/bold] {paid['symbol']}")


def infer() -> int:
    console.rule("inference: embeddings and generation, re-executed before they count")
    texts = DEMO / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": s}) + "\n" for s in (
        "A cat sits on the mat.", "A kitten is resting on a rug.", "The dog sleeps on the sofa.",
        "The central bank raised interest rates.", "Stock markets fell sharply today.",
        "Investors sold shares after the report.")))
    console.print(f"wrote {texts} (6 sentences: three about pets, three about markets)")
    embedded = cli("infer", "embed", "--input", str(texts), "--output", str(DEMO / "vectors.npy"))
    if embedded.returncode != 0:
        return 1
    generated = cli("infer", "generate", "--prompt", "The verified result is",
                    "--max-tokens", "16")
    return 0 if generated.returncode == 0 else 1


def _api(stack: dict) -> Api:
    """Reads as the CLI makes them here: signed in as the stack's development client."""
    return Api(stack["api_url"], signer=dev_identity(stack["api_url"], "client"))


def _await_created(api: Api, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.job(job_id)
            return
        except ApiError as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise SystemExit(f"the drop never became job {job_id}: {error}") from None
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
