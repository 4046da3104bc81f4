"""`proofline doctor`: a stage checked end to end, from this machine, with what is wrong in
words — the client-side half of `chalicelib.health` (tables, queues and their dead-letter
queues, the intake bucket's notification, the event sources, the secrets, the chain and each
key's role, Modal where inference spawns there, the API), then the server-side half, `GET
/health?deep=1`, signed in as an operator. Exit 0 when nothing failed, 1 when a check
failed, 3 when there is no local stack here to check.

The stage's environment is `.chalice/config.json`'s for `--stage` (this shell's variables
fill what it leaves blank: AWS credentials, `AWS_ENDPOINT_URL`, the `<NAME>_SECRET` names,
`CHAIN_RPC_URL`), or for the local stack the one it runs with (`.proofline/stack.json`).
"""
from __future__ import annotations

import os
import sys

import boto3
import click
from botocore.exceptions import BotoCoreError, ClientError
from rich.table import Table

from chalicelib import catalog
from chalicelib.aws.resources import RESOURCES, Resources
from chalicelib.config import ConfigError, Settings, stage_environment, stage_settings
from chalicelib.health import checks
from chalicelib.health.checks import guarded
from chalicelib.health.verdicts import Check, healthy, report, verdict

from . import client as api_client
from . import common
from .devstack import StackInfo, read_state
from .stack_cli import _alive

NO_STACK = "local stack"
MARKS = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: "[yellow]–[/yellow]"}


@click.command()
@click.option("--stage", default="local", show_default=True,
              help="The stage to check: `local` is the stack `proofline dev up` runs here; "
                   "another is read from .chalice/config.json, on AWS_ENDPOINT_URL if set.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx, stage, as_json):
    """Check a stage end to end and say what is wrong; exit 1 when anything fails (3: no
    local stack here to check)."""
    found = diagnose(ctx, stage)
    common.emit(report(stage, found), as_json, lambda _: render(stage, found))
    if [c.name for c in found] == [NO_STACK]:
        sys.exit(common.Exit.UNAVAILABLE)            # nothing here to check
    sys.exit(common.Exit.OK if healthy(found) else common.Exit.FAILED)


def render(stage: str, found: list[Check]) -> None:
    table = Table("", "check", "detail", show_lines=False, box=None, pad_edge=False)
    for check in found:
        table.add_row(MARKS[check.ok], check.name, check.detail)
    common.console.print(table, highlight=False)
    failed = [c.name for c in found if c.ok is False]
    skipped = sum(c.ok is None for c in found)
    aside = f" ({skipped} not checked from here)" if skipped else ""
    if failed:
        common.console.print(f"[red]stage {stage}: {len(failed)} of {len(found)} checks "
                             f"failed[/red]{aside}: {', '.join(failed)}", highlight=False)
    else:
        common.console.print(f"[green]stage {stage}: all {len(found)} checks passed[/green]"
                             f"{aside}", highlight=False)


def diagnose(ctx: click.Context, stage: str) -> list[Check]:
    """Every check of the client-side half, then the server's."""
    info = read_state(common.STATE_DIR) if stage == "local" else None
    if stage == "local" and (info is None or not _alive(info.pid)):
        return [Check(NO_STACK, False, "no local stack runs in this directory "
                      f"({common.STATE_DIR}/stack.json): start it with `proofline dev up`, or "
                      "name a deployed stage with --stage")]
    environment = info.environment() if info else _deployed_environment(stage)
    # The secrets (`config.secret`) and boto3 read the stage's environment from this process's.
    os.environ.update(environment)
    try:
        settings = stage_settings(environment)
    except ConfigError as exc:
        return [Check("config", False, f"stage {stage}'s environment is refused: {exc}")]
    found = [Check("config", True, _describe(settings))]
    session = boto3.session.Session()
    aws = checks.clients(settings, session)
    account = checks.aws_account(aws["sts"], settings)
    found.append(account)
    if account.ok:
        found += guarded("tables", lambda: checks.tables(aws["dynamodb"], settings))
        found += guarded("queues", lambda: checks.queues(aws["sqs"], settings,
                                                         deployed=info is None))
        found += guarded("buckets", lambda: checks.buckets(aws["s3"], aws["sqs"], settings))
        found += guarded("triggers", lambda: local_pump(info, aws["sqs"], settings) if info
                         else checks.triggers(aws["lambda"], aws["sqs"], settings))
    # Locally every secret is in the stack's one environment; a deployed stage gives the
    # workers' secrets only to them, readable here where this shell names them.
    local = info is not None
    found += guarded("secrets", lambda: checks.secrets(settings, workers_needed=local))
    found += guarded("chain", lambda: checks.chain(settings, workers_needed=local))
    found += guarded("modal", lambda: [modal(settings, aws, local=local,
                                             reachable=bool(account.ok))])
    url = info.api_url if info else ctx.obj.get("api") or _stack_api_url(session, settings)
    found += guarded("api", lambda: api(ctx, settings, url))
    return found


def _deployed_environment(stage: str) -> dict[str, str]:
    """The stage's variables from .chalice/config.json over this shell's; a variable the
    stage leaves blank keeps this shell's value."""
    try:
        variables = stage_environment(stage)
    except KeyError:
        raise click.ClickException(f"no stage {stage!r} in .chalice/config.json") from None
    merged = dict(os.environ)
    merged.update({k: v for k, v in variables.items() if v or not merged.get(k)})
    return merged


def _describe(settings: Settings) -> str:
    chain = (f"settles on chain {settings.chain_id} at {settings.escrow_address}"
             if settings.settlement_enabled else "settles nothing on chain")
    return (f"stage {settings.stage} {chain}; {len(settings.operators)} operator(s); AWS "
            f"{settings.aws_endpoint_url or settings.region}")


def local_pump(info: StackInfo, sqs, settings: Settings,
               resources: Resources = RESOURCES) -> list[Check]:
    """The local stack has no Lambda: its event pump stands in for the event source
    mappings, in the stack's process, and deletes only the records a handler does not
    report in `batchItemFailures` (what ReportBatchItemFailures does)."""
    alive = _alive(info.pid)
    found = []
    for queue in resources.queues:
        name = resources.name(settings, queue)
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])[
                "Attributes"]
            backlog = (f"; {counts.get('ApproximateNumberOfMessages', 0)} waiting, "
                       f"{counts.get('ApproximateNumberOfMessagesNotVisible', 0)} in flight")
        except (ClientError, BotoCoreError):
            backlog = ""                 # the queue's own check says what is wrong
        window = f" within {queue.batch_window_s} s" if queue.batch_window_s else ""
        found.append(Check(
            f"trigger {name}", alive,
            f"local, no Lambda: the stack's event pump (pid {info.pid}) delivers it to "
            f"{queue.consumer} in batches of up to {queue.batch_size}{window}, deleting only "
            f"the records not reported in batchItemFailures{backlog}" if alive else
            f"the stack's process (pid {info.pid}) is gone, and its event pump with it: "
            "nothing consumes the queue; `proofline dev down` then `proofline dev up`"))
    return found


def modal(settings: Settings, aws: dict, *, local: bool, reachable: bool) -> Check:
    """Where inference classes run on Modal, the inference pool has the Modal token."""
    classes = sorted(name for name, c in catalog.default().job_classes.items()
                     if c.runtime == "modal")
    if not classes:
        return Check("modal", None, "no job class runs on Modal")
    if local:
        return Check("modal", None, f"local: the inference pool runs {', '.join(classes)} "
                     "in-process unless the stack was started with MODAL_TOKEN_ID and "
                     "MODAL_TOKEN_SECRET (Modal's cloud is not called from here)")
    if not reachable:
        return Check("modal", None, "not checked: AWS does not answer (see `aws`)")
    try:
        consumers = checks.event_sources(aws["lambda"], aws["sqs"], settings.inference_queue)
    except (ClientError, BotoCoreError):
        consumers = []                   # the queue's trigger check says why
    if not consumers:
        return Check("modal", False, f"no function consumes {settings.inference_queue} (see "
                     "its trigger), so nothing spawns on Modal")
    return checks.modal_function(aws["lambda"], consumers[0]["FunctionArn"], classes)


def _stack_api_url(session, settings: Settings) -> str | None:
    """The API's URL from its CloudFormation stack (`proofline-<stage>-api`, deployed from
    `chalice package`), when it is there."""
    try:
        stack = session.client("cloudformation", region_name=settings.region,
                               endpoint_url=settings.aws_endpoint_url,
                               config=checks.CLIENT_CONFIG).describe_stacks(
            StackName=f"proofline-{settings.stage}-api")["Stacks"][0]
    except (ClientError, BotoCoreError, IndexError):
        return None
    return next((o["OutputValue"] for o in stack.get("Outputs", [])
                 if o["OutputKey"] == "EndpointURL"), None)


def api(ctx: click.Context, settings: Settings, url: str | None) -> list[Check]:
    """`GET /health` answers as this stage, on its chain and escrow; then `GET
    /health?deep=1` as an operator: the server's checks, each as `api: <check>`."""
    if not url:
        return [Check("api", None, f"no API URL for stage {settings.stage}: pass --api URL or "
                      f"set PROOFLINE_API_URL (or deploy it as CloudFormation stack "
                      f"proofline-{settings.stage}-api, whose EndpointURL is read)")]
    try:
        health = api_client.Api(url, timeout=10).health()
    except Exception as exc:
        return [Check("api", False, f"{url}/health does not answer ({str(exc)[:200]}): is the "
                      "API deployed, and is this its URL?")]
    problems = []
    if health.get("stage") != settings.stage:
        problems.append(f"{url} is stage {health.get('stage')!r}, not {settings.stage!r}: "
                        "--api points at another stage")
    chain_id = (health.get("sign_in") or {}).get("chain_id")
    if chain_id != settings.chain_id:
        problems.append(f"the API signs in on chain {chain_id}, the stage says CHAIN_ID "
                        f"{settings.chain_id}: redeploy it with this stage's config")
    contract = (health.get("signing") or {}).get("verifying_contract")
    if settings.settlement_enabled and (contract or "").lower() != settings.escrow_address.lower():
        problems.append(f"the API settles on escrow {contract}, the stage's ESCROW_ADDRESS is "
                        f"{settings.escrow_address}: redeploy one of them")
    found = [verdict("api", problems, f"{url} answers as stage {settings.stage}"
                     + (f", escrow {contract}" if contract else ""))]
    operator = common.api_for(ctx, operator=True, url=url)
    if operator.reader is None:
        return found + [Check("api deep", None, "no operator key to sign in with "
                              "(PROOFLINE_OPERATOR_KEY or its _KEYSTORE, or --sign): the "
                              "server-side half, GET /health?deep=1, was not run")]
    try:
        deep = operator.deep_health()
    except api_client.ApiError as exc:
        why = (": sign in as a DID in the stage's PROOFLINE_OPERATORS" if exc.status in (401, 403)
               else "")
        return found + [Check("api deep", False, f"GET /health?deep=1 answered {exc.status} "
                              f"{exc.reason}: {exc.message}{why}")]
    except Exception as exc:
        return found + [Check("api deep", False, f"GET /health?deep=1 failed: {str(exc)[:200]}")]
    return found + [Check(f"api: {c['name']}", c.get("ok"), c.get("detail", ""))
                    for c in deep.get("checks", [])]
