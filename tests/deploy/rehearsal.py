"""A deploy rehearsal: the two CloudFormation stacks a team deploys, created on moto.

`sam deploy` and `chalice package` + `sam deploy` send CloudFormation a SAM template that
AWS expands with the SAM transform; here the SAM translator (the library AWS runs) expands
it, and moto's CloudFormation creates what it describes. Two things moto cannot create from
a template are applied the way CloudFormation would apply them, through the service's own
API, and named in `APPLIED_BY_API`:

- `AWS::SQS::QueuePolicy`: moto has no CloudFormation resource for it → `SetQueueAttributes`.
- An `AWS::ApiGateway::RestApi` defined by an OpenAPI `Body`: moto creates the API but not
  its routes (and imports only OpenAPI 3, where Chalice writes Swagger 2), so its
  `Deployment` and `Stage` fail → the body's routes, integrations and authorizer created
  with API Gateway's own calls (intrinsics resolved against the created stack), then
  `CreateDeployment` of the stage.
- `AWS::CloudWatch::Alarm` and `AWS::CloudWatch::Dashboard` → `PutMetricAlarm` and
  `PutDashboard` with the resolved properties.
- A bucket's `NotificationConfiguration` and a table's `TimeToLiveSpecification`, which
  moto's resources ignore → `PutBucketNotificationConfiguration` and `UpdateTimeToLive`.
"""
from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/proofline-worker:rehearsal"
APPLIED_BY_API = {
    "AWS::SQS::QueuePolicy": "SetQueueAttributes(Policy) on each queue it names",
    "AWS::ApiGateway::Deployment": "the body's routes by CreateResource/PutMethod/PutIntegration",
    "AWS::ApiGateway::Stage": "CreateDeployment(stage)",
    "AWS::CloudWatch::Alarm": "PutMetricAlarm",
    "AWS::CloudWatch::Dashboard": "PutDashboard",
}
# IAM actions that take no resource (AWS's Service Authorization Reference names none for
# them): a statement granting one can only name Resource "*", and no other action may.
RESOURCELESS = {"cloudwatch:GetMetricData": "the status page reads each work queue's oldest "
                "message's age (AWS/SQS ApproximateAgeOfOldestMessage), in one request"}
ALARM_FIELDS = ("AlarmName", "AlarmDescription", "ActionsEnabled", "OKActions", "AlarmActions",
                "InsufficientDataActions", "MetricName", "Namespace", "Statistic",
                "ExtendedStatistic", "Dimensions", "Period", "Unit", "EvaluationPeriods",
                "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
                "EvaluateLowSampleCountPercentile", "Metrics", "ThresholdMetricId")


def run(args, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, **kw)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@dataclass
class Stack:
    """A created stack: its template (expanded) and where each logical resource went."""
    name: str
    template: dict
    physical: dict[str, str] = field(default_factory=dict)
    applied_by_api: list[str] = field(default_factory=list)

    def of_type(self, kind: str) -> dict[str, dict]:
        return {k: r for k, r in self.template["Resources"].items() if r["Type"] == kind}


def shared_template(stage: str, parameters: dict[str, str]) -> tuple[dict, dict]:
    """template.yaml as `sam build` leaves it (each image function given its image URI),
    expanded by the SAM transform."""
    template = yaml_parse((ROOT / "template.yaml").read_text())
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function" and props.get("PackageType") == "Image":
            props["ImageUri"] = PLACEHOLDER_IMAGE
    return template, {"Stage": stage, **parameters}


def chalice_template(sam_json: Path, code_uri: str, stage: str) -> tuple[dict, dict]:
    """`chalice package`'s SAM template, its code uploaded where `sam deploy` would put it,
    deployed with `--parameter-overrides Stage=<stage>`."""
    template = json.loads(sam_json.read_text())
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = code_uri
    return template, {"Stage": stage}


class Rehearsal:
    """Creates stacks on one moto endpoint, through boto3 clients made by `client`."""

    def __init__(self, client: Callable[[str], Any], region: str = "us-east-1"):
        self.client = client
        self.region = region
        self.account = client("sts").get_caller_identity()["Account"]

    def deploy(self, name: str, sam: tuple[dict, dict]) -> Stack:
        template, parameters = sam
        # What CloudFormation's SAM transform does, with the pseudo parameters of this region.
        session = boto3.session.Session(region_name=self.region)
        policies = ManagedPolicyLoader(self.client("iam"))
        expanded = Translator(None, Parser(), boto_session=session).translate(
            template, parameter_values=dict(parameters), get_managed_policy_map=policies.load)
        stack = Stack(name, expanded)
        later = {k: r for k, r in expanded["Resources"].items() if r["Type"] in APPLIED_BY_API}
        for api in stack.of_type("AWS::ApiGateway::RestApi").values():
            # CloudFormation takes the API's name from its OpenAPI title; moto needs it given.
            api["Properties"].setdefault("Name", api["Properties"]["Body"]["info"]["title"])
        body = {**expanded, "Resources": {k: r for k, r in expanded["Resources"].items()
                                          if k not in later}}
        body["Outputs"] = {k: o for k, o in expanded.get("Outputs", {}).items()
                           if not _mentions(o, later)}
        cfn = self.client("cloudformation")
        cfn.create_stack(StackName=name, TemplateBody=json.dumps(body),
                         Parameters=[{"ParameterKey": k, "ParameterValue": v}
                                     for k, v in parameters.items()],
                         Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
        status = cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
        if status != "CREATE_COMPLETE":
            events = cfn.describe_stack_events(StackName=name)["StackEvents"]
            failed = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                      for e in events if "FAILED" in e["ResourceStatus"]]
            raise RuntimeError(f"stack {name} is {status}: {failed}")
        stack.physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in
                          cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
                          if r["LogicalResourceId"] in expanded["Resources"]}
        self._apply(stack, later, parameters)
        return stack

    # -------------------------------------------------------------- what moto cannot create
    def _apply(self, stack: Stack, later: dict[str, dict], parameters: dict[str, str]) -> None:
        resolve = Resolver(self, stack, parameters)
        for logical, bucket in stack.of_type("AWS::S3::Bucket").items():
            notifications = bucket["Properties"].get("NotificationConfiguration")
            if notifications:
                queues = [{"QueueArn": resolve(q["Queue"]), "Events": [q["Event"]]}
                          for q in notifications.get("QueueConfigurations", [])]
                self.client("s3").put_bucket_notification_configuration(
                    Bucket=stack.physical[logical],
                    NotificationConfiguration={"QueueConfigurations": queues})
                stack.applied_by_api.append(f"{logical}.NotificationConfiguration")
        for logical, table in stack.of_type("AWS::DynamoDB::Table").items():
            ttl = table["Properties"].get("TimeToLiveSpecification")
            if ttl:
                self.client("dynamodb").update_time_to_live(
                    TableName=stack.physical[logical], TimeToLiveSpecification=ttl)
                stack.applied_by_api.append(f"{logical}.TimeToLiveSpecification")
        for logical, resource in later.items():
            props = resource["Properties"]
            if resource["Type"] == "AWS::SQS::QueuePolicy":
                policy = json.dumps(resolve(props["PolicyDocument"]))
                for queue in props["Queues"]:
                    self.client("sqs").set_queue_attributes(
                        QueueUrl=resolve(queue), Attributes={"Policy": policy})
            elif resource["Type"] == "AWS::ApiGateway::Stage":
                api = resolve(props["RestApiId"])
                definition = stack.template["Resources"][props["RestApiId"]["Ref"]]
                self._import_swagger(api, resolve(definition["Properties"]["Body"]))
                self.client("apigateway").create_deployment(restApiId=api,
                                                            stageName=props["StageName"])
            elif resource["Type"] == "AWS::CloudWatch::Alarm":
                self.client("cloudwatch").put_metric_alarm(
                    **{k: resolve(props[k]) for k in ALARM_FIELDS if k in props})
            elif resource["Type"] == "AWS::CloudWatch::Dashboard":
                self.client("cloudwatch").put_dashboard(
                    DashboardName=resolve(props["DashboardName"]),
                    DashboardBody=resolve(props["DashboardBody"]))
            stack.applied_by_api.append(f"{logical} ({resource['Type']})")


    def _import_swagger(self, api: str, body: dict) -> None:
        """What API Gateway's import does with a Swagger 2 body: the resources of each path,
        each method with its integration, behind the body's token authorizers."""
        gateway = self.client("apigateway")
        authorizers = {}
        for name, scheme in body.get("securityDefinitions", {}).items():
            spec = scheme["x-amazon-apigateway-authorizer"]
            authorizers[name] = gateway.create_authorizer(
                restApiId=api, name=name, type=spec["type"].upper(),
                authorizerUri=spec["authorizerUri"],
                identitySource=f"method.request.header.{scheme['name']}")["id"]
        ids = {r["path"]: r["id"] for r in gateway.get_resources(restApiId=api)["items"]}
        for path, methods in sorted(body["paths"].items()):
            parent = "/"
            for part in path.strip("/").split("/"):
                here = f"{parent.rstrip('/')}/{part}"
                if here not in ids:
                    ids[here] = gateway.create_resource(restApiId=api, parentId=ids[parent],
                                                        pathPart=part)["id"]
                parent = here
            for method, spec in methods.items():
                security = [name for rule in spec.get("security", []) for name in rule]
                gateway.put_method(
                    restApiId=api, resourceId=ids[path], httpMethod=method.upper(),
                    authorizationType="CUSTOM" if security else "NONE",
                    **({"authorizerId": authorizers[security[0]]} if security else {}))
                integration = spec["x-amazon-apigateway-integration"]
                gateway.put_integration(
                    restApiId=api, resourceId=ids[path], httpMethod=method.upper(),
                    type=integration["type"].upper(), uri=integration.get("uri", ""),
                    integrationHttpMethod=integration.get("httpMethod", "POST"))


class Resolver:
    """CloudFormation's intrinsic functions, for the values `_apply` needs."""

    def __init__(self, rehearsal: Rehearsal, stack: Stack, parameters: dict[str, str]):
        self.rehearsal, self.stack = rehearsal, stack
        defaults = {k: str(p.get("Default", "")) for k, p in
                    stack.template.get("Parameters", {}).items()}
        self.refs = {**defaults, **parameters, "AWS::Region": rehearsal.region,
                     "AWS::AccountId": rehearsal.account, "AWS::Partition": "aws",
                     "AWS::StackName": stack.name}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Ref"}:
            name = value["Ref"]
            return self.refs[name] if name in self.refs else self.stack.physical[name]
        if set(value) == {"Fn::GetAtt"}:
            logical, attribute = value["Fn::GetAtt"]
            return self.attribute(logical, attribute)
        if set(value) == {"Fn::Sub"}:
            pattern, names = (value["Fn::Sub"], {}) if isinstance(value["Fn::Sub"], str) \
                else value["Fn::Sub"]
            names = {k: self(v) for k, v in names.items()}

            def one(match: re.Match) -> str:
                ref = match.group(1)
                if ref in names:
                    return str(names[ref])
                if "." in ref:
                    return str(self.attribute(*ref.split(".", 1)))
                return str(self({"Ref": ref}))
            return re.sub(r"\$\{([A-Za-z0-9:._]+)\}", one, pattern)
        return {k: self(v) for k, v in value.items()}

    def attribute(self, logical: str, attribute: str) -> str:
        kind = self.stack.template["Resources"][logical]["Type"]
        physical = self.stack.physical[logical]
        if kind == "AWS::Lambda::Function" and attribute == "Arn":
            return self.rehearsal.client("lambda").get_function(
                FunctionName=physical)["Configuration"]["FunctionArn"]
        if kind == "AWS::SQS::Queue" and attribute in ("Arn", "QueueName"):
            arn = self.rehearsal.client("sqs").get_queue_attributes(
                QueueUrl=physical, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            return arn if attribute == "Arn" else arn.rsplit(":", 1)[1]
        raise NotImplementedError(f"{logical}.{attribute} ({kind})")


def _mentions(value: Any, logical_ids) -> bool:
    text = json.dumps(value)
    return any(f'"{name}"' in text or f"${{{name}" in text for name in logical_ids)
