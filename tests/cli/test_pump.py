"""The event pump hands handlers what Lambda would, and the app's triggers match the one
resource definition the pump and the templates share."""
import pytest
from aws_lambda_powertools.utilities.data_classes import SQSEvent as PowertoolsSQSEvent
from chalice.app import ScheduledEventConfig, SQSEvent, SQSEventConfig

from chalicelib.aws.resources import RESOURCES
from chalicelib.config import settings
from proofline.pump import LambdaContext, failed_ids, sqs_event

MESSAGE = {"MessageId": "m-1", "ReceiptHandle": "rh-1", "Body": '{"hello": "world"}',
           "MD5OfBody": "abc", "Attributes": {"ApproximateReceiveCount": "3",
                                              "SentTimestamp": "1700000000000"},
           "MessageAttributes": {"trace": {"StringValue": "t-1", "DataType": "String"}}}
ARN = "arn:aws:sqs:us-east-1:123456789012:q"


def test_events_parse_as_lambda_sqs_events_in_chalice_and_powertools():
    event = sqs_event([MESSAGE], ARN, "us-east-1")
    [chalice_record] = list(SQSEvent(event, None))
    assert (chalice_record.body, chalice_record.receipt_handle) == ('{"hello": "world"}', "rh-1")
    [record] = list(PowertoolsSQSEvent(event).records)
    assert record.message_id == "m-1" and record.event_source_arn == ARN
    assert record.attributes.approximate_receive_count == "3"
    assert record.message_attributes["trace"].string_value == "t-1"
    assert event["Records"][0]["eventSource"] == "aws:sqs"


def test_partial_failures_are_read_from_the_response():
    assert failed_ids({"batchItemFailures": [{"itemIdentifier": "m-2"}]}) == {"m-2"}
    assert failed_ids({"batchItemFailures": []}) == set()
    assert failed_ids(None) == set()


def test_context_counts_down():
    context = LambdaContext("f", timeout_s=10)
    assert 9000 < context.get_remaining_time_in_millis() <= 10000
    assert context.invoked_function_arn.endswith(":function:f")


def test_app_triggers_match_the_resource_definition():
    import app
    sqs = {s.queue: s for s in app.app.event_sources if isinstance(s, SQSEventConfig)}
    chalice_queues = [q for q in RESOURCES.queues if q.consumer.startswith("app:")]
    assert chalice_queues
    for queue in chalice_queues:
        name = getattr(settings(), queue.setting)
        assert sqs[name].name == queue.consumer.split(":")[1]
        assert sqs[name].batch_size == queue.batch_size
    assert any(isinstance(s, ScheduledEventConfig) and s.name == "sweep"
               for s in app.app.event_sources)


@pytest.mark.parametrize("queue", [q for q in RESOURCES.queues if q.process_pool])
def test_pool_consumers_are_importable_lambda_handlers(queue):
    from proofline.pump import load
    handler = load(queue.consumer)
    assert callable(handler) and handler.__code__.co_argcount == 2
