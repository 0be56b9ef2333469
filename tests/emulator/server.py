"""The AWS API emulator the tests run against: moto's server, plus what its SSM Run
Command lacks for a deploy tool to be tested on failure paths too.

Usage: python tests/emulator/server.py PORT     (scripts/test starts it on 127.0.0.1)

Added to moto 5.2.5, following the AWS API reference for each shape:
- DescribeInstanceInformation: the emulator's running EC2 instances as managed nodes,
  filtered by `tag:KEY`, `PingStatus` and `InstanceIds`, paged by MaxResults/NextToken.
- ListCommandInvocations: per-instance status of a command, with CommandPlugins
  (ResponseCode, Output) when Details is true, paged the same way.
- Invocations that take time and fail: a command starts its targets in the order given,
  at most `MaxConcurrency` (count or percentage) at once; the others are `Pending`. A
  started one is `InProgress` for its `seconds` and its first `pending_reads` reads
  (default 1), then ends with its outcome. Once more than `MaxErrors` have failed, the
  targets not yet started end `Cancelled` (those running finish). Outcomes come from
  rules posted to `POST /_shipit/ssm`; without a rule a command succeeds with exit code 0.
- Eventual consistency: a new invocation is missing from ListCommandInvocations and
  `InvocationDoesNotExist` in GetCommandInvocation for its first `invisible_reads` reads
  (default 1: every AWS test meets it). GetCommandInvocation shows the first 24,000 characters of each stream.
- `GET /_shipit/in_flight?TEXT`: the most invocations that ran at once, of the commands
  whose comment contains TEXT (a test's count of its own deploy's concurrency).
- `SendCommand` with only InstanceIds targeted every instance in the region; it now
  targets the instances named (Targets still resolve tags as before).
- ThrottlingException on demand, for the first N calls of an operation, or by rate: a
  token bucket per operation (`per_second`, `burst`), as AWS meters each API.
- What AWS refuses, each rule from the SSM API reference (tests/aws/emulator.rs tests
  each one on its own):
  SendCommand: at most 50 InstanceIds and a Comment of at most 100 characters
  (ValidationException); MaxConcurrency and MaxErrors must match their documented
  patterns; TimeoutSeconds within 30..2592000; an instance id that is not a running
  instance of the emulator is `InvalidInstanceId`; an offline node's invocation ends
  `TimedOut` / `DeliveryTimedOut`, not Success; so does an invocation whose instance is
  terminated (EC2 TerminateInstances) before it ended.
  ListCommands: on demand, a new command is left out of its first listings (eventual
  consistency, `list_lag`); MaxResults within 1..50, paged by NextToken; Filters honoured
  (InvokedAfter, InvokedBefore, Status, DocumentName), an unknown key is
  `InvalidFilterKey`, a timestamp or status that is not one is a ValidationException
  (the reference names no error for it).
  ListCommandInvocations: MaxResults within 1..50. DescribeInstanceInformation:
  MaxResults within 5..50. PutParameter: a value of at most 4 KB (standard tier) or
  8 KB (advanced).
  GetParameter: on demand, a parameter just written is answered as it was before the
  write (the version before, or ParameterNotFound for a new one) for the next
  `param_lag.reads` reads: AWS does not promise that a read sees a write it has just
  acknowledged.
- SSM Change Calendar: CreateDocument takes a `ChangeCalendar` document (iCalendar TEXT,
  which moto refuses), and GetCalendarState answers OPEN only if every calendar named is
  open at AtTime (default now), with NextTransitionTime; X-CALENDAR-TYPE DEFAULT_OPEN or
  DEFAULT_CLOSED, VEVENTs with DTSTART/DTEND in UTC, a TZID, X-WR-TIMEZONE or whole days.
  Refused: content that is not a Change Calendar (InvalidDocumentContent), a calendar
  not there (InvalidDocument), another document type (InvalidDocumentType), no names
  (ValidationException), a time that is not one (InvalidDocumentContent); an RRULE,
  RDATE or EXDATE, which the emulator does not expand, is UnsupportedCalendarException
  (AWS reads them).
- SQS FIFO sequence numbers: moto draws each at random; AWS's "continues to increase
  for a particular MessageGroupId" (SendMessage, SequenceNumber). Now they grow per
  queue and group, by uneven steps (AWS: "large, non-consecutive"), 20 digits.
- Step Functions: States.DataLimitExceeded (a state's data past 256 KB, which moto
  checks) is terminal: no Retry or Catch takes it, as States.ALL does not on AWS; moto
  retried and caught it like any other error.
- CloudWatch in Smithy RPC v2 CBOR, the only protocol the SDK for Rust speaks to it
  (moto reads JSON and query): `POST /service/GraniteServiceVersion20100801/operation/OP`
  is handed to moto as AWS JSON 1.0 and its answer or error written back in CBOR, member
  by member from botocore's model of the operation (an error with its query-compatible
  code in `x-amzn-query-error`, as AWS sends it). PutCompositeAlarm reaches moto's
  PutMetricAlarm (which reads AlarmRule), as moto means it to. DescribeAlarms as the
  CloudWatch API reference has it: AlarmNames at most 100 and MaxRecords within 1..100
  (ValidationError); without AlarmTypes only metric alarms; pages of MaxRecords (default
  50) by NextToken, an unknown one InvalidNextToken. moto evaluates no composite rule:
  a test sets a composite alarm's state itself.
- Lambda without Docker (`lambda-simple`): a canned result shaped like a function error,
  `{"errorType": …, "errorMessage": …}`, comes back as one (`X-Amz-Function-Error:
  Unhandled`), so Step Functions' Retry and Catch can be run.

`POST /_shipit/ssm` takes, and replaces the previous:
  {"rules": [{"instance": "i-…" (optional), "contains": "text in the script" (optional),
              "status": "Failed" | "TimedOut" | "Success", "exit_code": 1,
              "stdout": "…", "stderr": "…", "pending_reads": 2, "seconds": 0.5}],
   "offline": ["i-…"],                     # PingStatus ConnectionLost
   "pending_reads": 1,                     # default for invocations without a rule
   "seconds": 0,                           # likewise
   "invisible_reads": 1,                   # eventual consistency, for every invocation
   "param_lag": {"reads": 3, "contains": "/live/"},  # GetParameter answers a parameter
                                           # whose name holds the text as it was before
                                           # each write, for the next 3 reads
   "list_lag": {"reads": 2, "contains": "text"},  # ListCommands leaves a new command
                                           # (whose comment holds the text, if given) out
                                           # of the first 2 listings that would show it
   "throttle": {"SendCommand": 2},         # the next 2 SendCommand calls are throttled
   "rates": {"SendCommand": {"per_second": 5, "burst": 10}},
   "lost_answers": {"SendCommand": 1}}     # the next SendCommand is done, but answered
                                           # 500 InternalServerError: a reply lost on its
                                           # way back, as a dropped connection leaves it;
                                           # {"count": 1, "contains": "text"}: the next
                                           # whose request body holds the text
The first rule whose instance and text match decides an invocation's outcome.
"""

import base64
import datetime
import io
import json
import os
import re
import time
import signal
import sys
import threading

import botocore.session
from botocore.parsers import JSONParser, RpcV2CBORParser
from botocore.serialize import RpcV2CBORSerializer
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.cloudwatch import exceptions as cw_exceptions
from moto.cloudwatch.responses import CloudWatchResponse
from moto.stepfunctions.parser.asl.component.common.error_name.error_equals_decl import (
    ErrorEqualsDecl)
from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.sqs.models import SQSBackend
from moto.ssm import exceptions as ssm_exceptions
from moto.ssm import models as ssm_models
from moto.ssm.responses import SimpleSystemManagerResponse
from werkzeug.serving import run_simple

LOCK = threading.Lock()
CLOUDWATCH_MODEL = botocore.session.get_session().get_service_model("cloudwatch")
DEFAULTS = {"rules": [], "offline": [], "pending_reads": 1, "seconds": 0, "invisible_reads": 1,
            "throttle": {}, "rates": {}, "lost_answers": {}, "list_lag": {}, "param_lag": {}}
CONTROL = dict(DEFAULTS)


class Throttled(ServiceException):
    code = "ThrottlingException"
    message = "Rate exceeded"


BUCKETS = {}


def maybe_throttle(operation):
    with LOCK:
        left = CONTROL["throttle"].get(operation, 0)
        if left > 0:
            CONTROL["throttle"][operation] = left - 1
            raise Throttled()
        rate = CONTROL["rates"].get(operation)
        if rate:
            # A token bucket per operation, as AWS meters each API: `per_second` tokens
            # a second, up to `burst` saved; a call without a token is throttled.
            now = time.monotonic()
            tokens, then = BUCKETS.get(operation, (rate["burst"], now))
            tokens = min(rate["burst"], tokens + (now - then) * rate["per_second"])
            if tokens < 1:
                BUCKETS[operation] = (tokens, now)
                raise Throttled()
            BUCKETS[operation] = (tokens - 1, now)


class Invalid(ServiceException):
    code = "ValidationException"


class InvalidInstanceId(ServiceException):
    code = "InvalidInstanceId"


class InvalidFilterKey(ServiceException):
    code = "InvalidFilterKey"


def max_results(response, low, high, default):
    value = response._get_param("MaxResults")
    if value is None:
        return default
    if not low <= int(value) <= high:
        raise Invalid(f"1 validation error detected: Value '{value}' at 'maxResults' failed to "
                      f"satisfy constraint: Member must have value between {low} and {high}")
    return int(value)


def outcome_for(instance_id, script):
    for rule in CONTROL["rules"]:
        if rule.get("instance") not in (None, instance_id):
            continue
        if rule.get("contains") is not None and rule["contains"] not in script:
            continue
        return rule
    return {}


# --- SendCommand: target only the instances named, give invocations their outcome ----

original_targets = ssm_models.Command._get_instance_ids_from_targets
original_init = ssm_models.Command.__init__


def targets_only_if_given(self):
    return original_targets(self) if self.targets else []


def command_init(self, *args, **kwargs):
    asked = list(kwargs.get("instance_ids") or [])
    original_init(self, *args, **kwargs)
    # moto keeps the ids in a set's order; targets are run in the order they were given.
    order = {instance: i for i, instance in enumerate(asked)}
    self.invocations.sort(key=lambda inv: order.get(inv["InstanceId"], len(order)))
    script = "\n".join(self.parameters.get("commands", []))
    with LOCK:
        for inv in self.invocations:
            rule = outcome_for(inv["InstanceId"], script)
            status = rule.get("status", "Success")
            inv["Status"] = inv["StatusDetails"] = status
            inv["ResponseCode"] = rule.get("exit_code", 0 if status == "Success" else 1)
            inv["StandardOutputContent"] = rule.get("stdout", "")
            inv["StandardErrorContent"] = rule.get("stderr", "")
            inv["_pending"] = rule.get("pending_reads", CONTROL["pending_reads"])
            inv["_seconds"] = rule.get("seconds", CONTROL["seconds"])
            inv["_invisible"] = CONTROL["invisible_reads"]
            inv["_started"] = None
            inv["_done"] = False
            if inv["InstanceId"] in CONTROL["offline"]:
                # The agent never picks it up: SSM gives up after the delivery timeout.
                inv.update(Status="TimedOut", StatusDetails="DeliveryTimedOut", ResponseCode=-1,
                           StandardOutputContent="", StandardErrorContent="")
        advance(self)


def share(value, targets, floor):
    """A MaxConcurrency or MaxErrors value: a count, or a percentage of the targets."""
    if value.endswith("%"):
        return max(floor, int(value[:-1]) * targets // 100)
    return int(value)


def advance(command):
    """Starts invocations in order while fewer than MaxConcurrency run; once more than
    MaxErrors have failed, the rest are not sent (they end Cancelled). Holds LOCK."""
    invs = command.invocations
    limit = share(command.max_concurrency or "50", len(invs), 1)
    threshold = share(command.max_errors or "0", len(invs), 0)
    failed = sum(1 for i in invs if i["_done"] and i["Status"] != "Success")
    running = sum(1 for i in invs if i["_started"] is not None and not i["_done"])
    for inv in invs:
        if inv["_started"] is not None or inv["_done"]:
            continue
        if failed > threshold:
            inv.update(_done=True, Status="Cancelled", StatusDetails="Cancelled", ResponseCode=-1,
                       StandardOutputContent="", StandardErrorContent="")
        elif running < limit:
            inv["_started"] = time.monotonic()
            inv["_started_at"] = datetime.datetime.now(datetime.timezone.utc)
            running += 1


TERMINATED = set()
original_terminate = None


def terminate_instances(self, instance_ids, *args, **kwargs):
    with LOCK:
        TERMINATED.update(instance_ids)
    return original_terminate(self, instance_ids, *args, **kwargs)


def read(inv, command):
    """The invocation as a caller sees it now: Pending until MaxConcurrency lets it start,
    then InProgress for its seconds and its first reads, then its outcome. An instance
    terminated before its invocation ended never answers: SSM gives up on it as it does on
    a command past its expiry, DeliveryTimedOut ("If a command expires, it changes status
    to DeliveryTimedOut for all invocations that have the status InProgress, Pending, or
    Delayed", Command.ExpiresAfter); the wait for that expiry is not modelled."""
    with LOCK:
        if not inv["_done"] and inv["InstanceId"] in TERMINATED:
            inv.update(_done=True, Status="TimedOut", StatusDetails="DeliveryTimedOut",
                       ResponseCode=-1, StandardOutputContent="", StandardErrorContent="")
        advance(command)
        if not inv["_done"]:
            if inv["_started"] is None:
                return dict(inv, Status="Pending", StatusDetails="Pending", ResponseCode=-1,
                            StandardOutputContent="", StandardErrorContent="")
            if time.monotonic() < inv["_started"] + inv["_seconds"] or inv["_pending"] > 0:
                inv["_pending"] = max(0, inv["_pending"] - 1)
                return dict(inv, Status="InProgress", StatusDetails="InProgress",
                            ResponseCode=-1, StandardOutputContent="", StandardErrorContent="")
            inv.update(_done=True, _ended=time.monotonic(),
                       _ended_at=datetime.datetime.now(datetime.timezone.utc))
            advance(command)
        return inv


def invisible(inv):
    """SSM shows a new invocation only after a moment (eventual consistency)."""
    with LOCK:
        if inv.get("_invisible", 0) > 0:
            inv["_invisible"] -= 1
            return True
        return False


class InvocationDoesNotExist(ServiceException):
    code = "InvocationDoesNotExist"


from moto.ec2.models.instances import InstanceBackend  # noqa: E402

original_terminate = InstanceBackend.terminate_instances
InstanceBackend.terminate_instances = terminate_instances
ssm_models.Command._get_instance_ids_from_targets = targets_only_if_given
ssm_models.Command.__init__ = command_init
original_get_invocation = ssm_models.Command.get_invocation


def get_invocation(self, instance_id, plugin_name):
    stored = original_get_invocation(self, instance_id, plugin_name)
    if invisible(stored):
        raise InvocationDoesNotExist("")
    found = read(stored, self)
    shown = {k: v for k, v in found.items() if not k.startswith("_")}
    # GetCommandInvocation shows the first 24,000 characters of each stream.
    for stream in ("StandardOutputContent", "StandardErrorContent"):
        shown[stream] = shown.get(stream, "")[:24000]
    return shown


ssm_models.Command.get_invocation = get_invocation


def page(items, size, token):
    start = int(token or 0)
    rest = start + size
    return items[start:rest], (str(rest) if rest < len(items) else None)


# --- What AWS refuses --------------------------------------------------------------------

MAX_CONCURRENCY = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")
MAX_ERRORS = re.compile(r"^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$")


def running_instances(response):
    ec2 = ec2_backends[response.current_account][response.region]
    return {inst.id for r in ec2.all_reservations() for inst in r.instances
            if inst.state == "running"}


def send_command_checked(original):
    def send_command(self):
        ids = self._get_param("InstanceIds", [])
        comment = self._get_param("Comment", "")
        if len(ids) > 50:
            raise Invalid("1 validation error detected: Value at 'instanceIds' failed to satisfy "
                          "constraint: Member must have length less than or equal to 50")
        if len(comment) > 100:
            raise Invalid("1 validation error detected: Value at 'comment' failed to satisfy "
                          "constraint: Member must have length less than or equal to 100")
        for name, pattern in [("maxConcurrency", MAX_CONCURRENCY), ("maxErrors", MAX_ERRORS)]:
            value = self._get_param(name[0].upper() + name[1:])
            if value is not None and not pattern.match(value):
                raise Invalid(f"1 validation error detected: Value '{value}' at '{name}' failed "
                              f"to satisfy constraint: Member must satisfy regular expression "
                              f"pattern: {pattern.pattern}")
        timeout = self._get_param("TimeoutSeconds")
        if timeout is not None and not 30 <= int(timeout) <= 2592000:
            raise Invalid(f"1 validation error detected: Value '{timeout}' at 'timeoutSeconds' "
                          "failed to satisfy constraint: Member must have value between 30 and "
                          "2592000")
        known = running_instances(self)
        if any(i not in known for i in ids):
            raise InvalidInstanceId("Instances " + str([i for i in ids if i not in known])
                                    + " not in a valid state for account "
                                    + self.current_account)
        return original(self)
    return send_command


def parse_time(value):
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"{value!r} is not a timestamp like 2021-07-07T00:00:00Z")


LIST_COMMANDS_STATUSES = {"Pending", "InProgress", "Success", "Cancelled", "Failed", "TimedOut",
                          "AccessDenied", "DeliveryTimedOut", "ExecutionTimedOut", "Incomplete",
                          "NoInstancesInTag", "LimitExceeded"}


def command_filters(self, operation):
    """The Filters of ListCommands or ListCommandInvocations, as tests on a command."""
    tests = []
    for f in self._get_param("Filters", []):
        key, value = f.get("key") or f.get("Key"), f.get("value") or f.get("Value")
        if key == "InvokedAfter":
            after = parse_time(value)
            tests.append(lambda c, t=after: aware(c.requested_date_time) >= t)
        elif key == "InvokedBefore":
            before = parse_time(value)
            tests.append(lambda c, t=before: aware(c.requested_date_time) < t)
        elif key == "Status":
            if value not in LIST_COMMANDS_STATUSES:
                raise Invalid(f"{value!r} is not a status ListCommands can filter on")
            tests.append(lambda c, v=value: c.status == v)
        elif key == "DocumentName":
            tests.append(lambda c, v=value: c.document_name == v)
        else:
            raise InvalidFilterKey(f"filter key {key} of {operation} is not modelled here")
    return tests


def list_commands(self):
    size = max_results(self, 1, 50, 50)
    tests = command_filters(self, "ListCommands")
    commands = self.ssm_backend.list_commands(self._get_param("CommandId"),
                                              self._get_param("InstanceId"))
    found = [c for c in commands if all(t(c) for t in tests) and listed(c)]
    items, token = page(found, size, self._get_param("NextToken"))
    result = {"Commands": [c.response_object() for c in items]}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def listed(command):
    """ListCommands is a read AWS does not promise to be consistent with the SendCommand
    just answered: on demand, a new command is left out of its first `list_lag.reads`
    listings that would show it."""
    with LOCK:
        lag = CONTROL["list_lag"]
        if lag.get("contains", "") not in (command.comment or ""):
            return True
        seen = LISTINGS.get(command.command_id, 0)
        LISTINGS[command.command_id] = seen + 1
        return seen >= lag.get("reads", 0)


LISTINGS = {}


def aware(moment):
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


# --- Operations moto does not implement -------------------------------------------------

def describe_instance_information(self):
    filters = {f["Key"]: f["Values"] for f in self._get_param("Filters", [])}
    ec2 = ec2_backends[self.current_account][self.region]
    nodes = []
    for reservation in ec2.all_reservations():
        for inst in reservation.instances:
            if inst.state != "running":
                continue
            tags = {t["key"]: t["value"] for t in inst.get_tags()}
            ping = "ConnectionLost" if inst.id in CONTROL["offline"] else "Online"
            wanted = True
            for key, values in filters.items():
                if key.startswith("tag:"):
                    wanted &= tags.get(key[4:]) in values
                elif key == "PingStatus":
                    wanted &= ping in values
                elif key == "InstanceIds":
                    wanted &= inst.id in values
                else:
                    raise ServiceException("InvalidFilterKey", f"unsupported filter key {key}")
            if wanted:
                nodes.append({
                    "InstanceId": inst.id, "PingStatus": ping, "ResourceType": "EC2Instance",
                    "PlatformType": "Linux", "PlatformName": "Amazon Linux",
                    "AgentVersion": "3.3.0.0", "IsLatestVersion": True,
                    "IPAddress": inst.private_ip,
                })
    nodes.sort(key=lambda n: n["InstanceId"])
    items, token = page(nodes, max_results(self, 5, 50, 50), self._get_param("NextToken"))
    result = {"InstanceInformationList": items}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def list_command_invocations(self):
    command_id = self._get_param("CommandId")
    instance_id = self._get_param("InstanceId")
    details = self._get_param("Details", False)
    tests = command_filters(self, "ListCommandInvocations")
    size = max_results(self, 1, 50, 50)
    commands = self.ssm_backend.list_commands(command_id, instance_id)
    rows = []
    for command in (c for c in commands if all(t(c) for t in tests)):
        for stored in command.invocations:
            if instance_id and stored["InstanceId"] != instance_id:
                continue
            if invisible(stored):
                continue
            inv = read(stored, command)
            row = {
                "CommandId": command.command_id, "InstanceId": inv["InstanceId"],
                "Comment": command.comment, "DocumentName": command.document_name,
                "RequestedDateTime": command.requested_date_time,
                "Status": inv["Status"], "StatusDetails": inv["StatusDetails"],
            }
            if details:
                row["CommandPlugins"] = [{
                    "Name": "aws:runShellScript", "Status": inv["Status"],
                    "StatusDetails": inv["StatusDetails"], "ResponseCode": inv["ResponseCode"],
                    # ListCommandInvocations shows the first 2,500 characters.
                    "Output": (inv["StandardOutputContent"] + inv["StandardErrorContent"])[:2500],
                }]
                for field, moment in (("ResponseStartDateTime", "_started_at"),
                                      ("ResponseFinishDateTime", "_ended_at")):
                    if inv.get(moment) is not None:
                        row["CommandPlugins"][0][field] = inv[moment]
            rows.append(row)
    items, token = page(rows, size, self._get_param("NextToken"))
    result = {"CommandInvocations": items}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def throttled(name, method):
    def wrapper(self):
        maybe_throttle(name)
        return method(self)
    return wrapper


SimpleSystemManagerResponse.describe_instance_information = throttled(
    "DescribeInstanceInformation", describe_instance_information)
SimpleSystemManagerResponse.list_command_invocations = throttled(
    "ListCommandInvocations", list_command_invocations)
SimpleSystemManagerResponse.send_command = send_command_checked(
    SimpleSystemManagerResponse.send_command)
SimpleSystemManagerResponse.list_commands = list_commands


def put_parameter_checked(original):
    """PutParameter: a standard-tier value holds at most 4 KB, an advanced one 8 KB
    (Parameter Store quotas); moto takes any size."""
    def put_parameter(self):
        value = self._get_param("Value") or ""
        tier = self._get_param("Tier") or "Standard"
        limit = 8192 if tier == "Advanced" else 4096
        if len(value.encode()) > limit:
            raise Invalid(f"1 validation error detected: Value at 'value' failed to satisfy "
                          f"constraint: Member must have length less than or equal to {limit}")
        name = self._get_param("Name") or ""
        before = self.ssm_backend.get_parameter(name) if ":" not in name else None
        answer = original(self)
        with LOCK:
            lag = CONTROL["param_lag"]
            if lag.get("reads") and lag.get("contains", "") in name:
                PARAM_STALE[name] = {"reads": lag["reads"],
                                     "version": before.version if before else None}
        return answer
    return put_parameter


PARAM_STALE = {}


def get_parameter_lagging(original):
    """GetParameter as it answers before it has caught up with a write (`param_lag`)."""
    def get_parameter(self):
        name = self._get_param("Name") or ""
        with LOCK:
            stale = PARAM_STALE.get(name)
            lagging = bool(stale and stale["reads"] > 0)
            if lagging:
                stale["reads"] -= 1
        if not lagging:
            return original(self)
        if stale["version"] is None:
            raise ssm_exceptions.ParameterNotFound(f"Parameter {name} not found.")
        old = self.ssm_backend.get_parameter(f"{name}:{stale['version']}")
        return ActionResult({"Parameter": old.response_object(False, self.region)})
    return get_parameter


SimpleSystemManagerResponse.put_parameter = put_parameter_checked(
    SimpleSystemManagerResponse.put_parameter)
SimpleSystemManagerResponse.get_parameter = get_parameter_lagging(
    SimpleSystemManagerResponse.get_parameter)
for op, attr in [("SendCommand", "send_command"), ("GetCommandInvocation", "get_command_invocation"),
                 ("ListCommands", "list_commands")]:
    setattr(SimpleSystemManagerResponse, attr, throttled(op, getattr(SimpleSystemManagerResponse, attr)))


# --- SSM Change Calendar: CreateDocument (ChangeCalendar) and GetCalendarState ----------

class InvalidDocumentType(ServiceException):
    code = "InvalidDocumentType"


class UnsupportedCalendarException(ServiceException):
    code = "UnsupportedCalendarException"


# Change Calendar documents by name: their iCalendar text. moto takes only JSON and YAML
# documents; AWS keeps a calendar as TEXT.
CALENDARS = {}
UTC = datetime.timezone.utc


def unfold(content):
    """iCalendar's content lines (RFC 5545 3.1: a line that begins with a space or a
    tab continues the one before)."""
    lines = []
    for raw in content.replace("\r\n", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += raw[1:]
        elif raw.strip():
            lines.append(raw.strip())
    return lines


def calendar_parts(content):
    """Whether a calendar is open by default, its X-WR-TIMEZONE, and each VEVENT's
    properties ({name: (params, value)}). InvalidDocumentContent for what is not a
    Change Calendar (CreateDocument's error for content that is not valid)."""
    lines = unfold(content)
    if not lines or lines[0] != "BEGIN:VCALENDAR" or lines[-1] != "END:VCALENDAR":
        raise ssm_exceptions.InvalidDocumentContent("The content for the document is not valid.")
    default, zone, events, event = None, "UTC", [], None
    for line in lines:
        head, _, value = line.partition(":")
        name, *params = head.split(";")
        params = dict(p.split("=", 1) for p in params if "=" in p)
        name = name.upper()
        if name == "X-CALENDAR-TYPE":
            default = value
        elif name == "X-WR-TIMEZONE":
            zone = value
        elif (name, value) == ("BEGIN", "VEVENT"):
            event = {}
        elif (name, value) == ("END", "VEVENT") and event is not None:
            events.append(event)
            event = None
        elif event is not None:
            event[name] = (params, value)
    if default not in ("DEFAULT_OPEN", "DEFAULT_CLOSED"):
        raise ssm_exceptions.InvalidDocumentContent(
            "The content for the document is not valid: X-CALENDAR-TYPE must be "
            "DEFAULT_OPEN or DEFAULT_CLOSED.")
    return default == "DEFAULT_OPEN", zone, events


def moment(params, value, zone):
    """A DTSTART or DTEND as a UTC time: UTC (…Z), local in its TZID or the calendar's
    time zone, or a whole day (VALUE=DATE)."""
    import zoneinfo
    try:
        if value.endswith("Z"):
            return datetime.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        form = "%Y%m%d" if params.get("VALUE") == "DATE" else "%Y%m%dT%H%M%S"
        local = datetime.datetime.strptime(value, form)
        tz = params.get("TZID", zone).strip('"')
        return local.replace(tzinfo=zoneinfo.ZoneInfo(tz)).astimezone(UTC)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError) as e:
        raise UnsupportedCalendarException(f"The calendar entry is not supported: {e}")


def calendar_events(name, documents):
    """Calendar `name` (or its ARN) read: open by default?, [(start, end)] in UTC;
    `documents`: moto's other documents."""
    name = name.split(":document/")[-1]
    content = CALENDARS.get(name)
    if content is None:
        if name in documents:
            raise InvalidDocumentType(
                f"The SSM document type of {name} is not valid: GetCalendarState reads "
                "ChangeCalendar documents.")
        raise ssm_exceptions.InvalidDocument("The specified SSM document does not exist.")
    default_open, zone, events = calendar_parts(content)
    spans = []
    for event in events:
        # Recurrence is not modelled here: refused rather than read as a single event.
        if {"RRULE", "RDATE", "EXDATE"} & event.keys() or not {"DTSTART", "DTEND"} <= event.keys():
            raise UnsupportedCalendarException(
                "The calendar entry is not supported (the emulator reads events with "
                "DTSTART and DTEND, without RRULE, RDATE or EXDATE).")
        spans.append((moment(*event["DTSTART"], zone), moment(*event["DTEND"], zone)))
    return default_open, spans


def closed_at(calendar, t):
    default_open, spans = calendar
    inside = any(start <= t < end for start, end in spans)
    # An event closes a calendar open by default, and opens one closed by default.
    return default_open == inside


def iso(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_document_calendar(original):
    """CreateDocument: a ChangeCalendar document (TEXT, iCalendar) is kept for
    GetCalendarState; its name as any document's; content that is not a Change Calendar
    is InvalidDocumentContent; a name taken, DocumentAlreadyExists."""
    def create_document(self):
        if self._get_param("DocumentType") != "ChangeCalendar":
            return original(self)
        name = self._get_param("Name") or ""
        if not re.fullmatch(r"[a-zA-Z0-9_\-.]{3,128}", name) or re.match(
                r"(aws-|amazon|amzn)", name.lower()):
            raise Invalid(f"Invalid document name {name}")
        content = self._get_param("Content") or ""
        _, zone, events = calendar_parts(content)
        for event in events:
            for prop in ("DTSTART", "DTEND"):
                if prop in event:
                    try:
                        moment(*event[prop], zone)
                    except UnsupportedCalendarException as e:
                        raise ssm_exceptions.InvalidDocumentContent(
                            f"The content for the document is not valid: {prop} {e}")
        with LOCK:
            if name in CALENDARS or name in self.ssm_backend._documents:
                raise ssm_exceptions.DocumentAlreadyExists("The specified document already exists.")
            CALENDARS[name] = content
        return ActionResult({"DocumentDescription": {
            "Name": name, "DocumentType": "ChangeCalendar", "DocumentFormat": "TEXT",
            "Status": "Active", "DocumentVersion": "1", "LatestVersion": "1",
            "DefaultVersion": "1", "Owner": self.current_account,
            "CreatedDate": datetime.datetime.now(UTC)}})
    return create_document


def get_calendar_state(self):
    """GetCalendarState: OPEN only if every calendar named is open at AtTime (default:
    now), with the next time that changes, if any."""
    names = self._get_param("CalendarNames") or []
    if not names:
        raise Invalid("1 validation error detected: Value at 'calendarNames' failed to "
                      "satisfy constraint: Member must not be null or empty")
    at = self._get_param("AtTime")
    try:
        t = datetime.datetime.fromisoformat(at.replace("Z", "+00:00")) if at else \
            datetime.datetime.now(UTC)
    except ValueError:
        raise Invalid(f"AtTime {at!r} is not an ISO 8601 time")
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    calendars = [calendar_events(n, self.ssm_backend._documents) for n in names]
    closed = any(closed_at(c, t) for c in calendars)
    bounds = sorted({b for _, spans in calendars for span in spans for b in span if b > t})
    change = next((b for b in bounds if any(closed_at(c, b) for c in calendars) != closed), None)
    result = {"State": "CLOSED" if closed else "OPEN", "AtTime": at or iso(t)}
    if change:
        result["NextTransitionTime"] = iso(change)
    return ActionResult(result)


SimpleSystemManagerResponse.create_document = create_document_calendar(
    SimpleSystemManagerResponse.create_document)
SimpleSystemManagerResponse.get_calendar_state = throttled("GetCalendarState", get_calendar_state)


# --- SQS FIFO: sequence numbers that grow within a message group -------------------------

original_send_message = SQSBackend.send_message
SEQUENCES = {}


def send_message(self, queue_name, message_body, *args, **kwargs):
    message = original_send_message(self, queue_name, message_body, *args, **kwargs)
    if message.sequence_number is not None:
        with LOCK:
            key = (queue_name, message.group_id)
            # Uneven steps from a number near the top of 20 digits' range.
            last = SEQUENCES.get(key, 18_000_000_000_000_000_000)
            SEQUENCES[key] = last + 1 + int(message.id[:4], 16) % 9973
            message.sequence_number = str(SEQUENCES[key])
    return message


SQSBackend.send_message = send_message


# --- Lambda function errors --------------------------------------------------------------

original_invoke = LambdaSimpleBackend.invoke


def invoke(self, function_name, qualifier, body, headers, response_headers):
    payload = original_invoke(self, function_name, qualifier, body, headers, response_headers)
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and {"errorType", "errorMessage"} <= parsed.keys():
        response_headers["x-amz-function-error"] = "Unhandled"
    return payload


LambdaSimpleBackend.invoke = invoke


# --- Step Functions: States.DataLimitExceeded is terminal -------------------------------

original_error_equals = ErrorEqualsDecl._eval_body


def error_equals(self, env):
    """A state whose data passes 256 KB fails with States.DataLimitExceeded (moto checks
    the size), a terminal error that States.ALL does not catch (Step Functions error
    handling); moto retries and catches it like any other. Taken here as terminal for
    every Retry and Catch, the stricter reading."""
    if getattr(env.stack[-1], "error_name", None) == "States.DataLimitExceeded":
        env.stack.pop()
        env.stack.append(False)
        return
    original_error_equals(self, env)


ErrorEqualsDecl._eval_body = error_equals


# --- CloudWatch --------------------------------------------------------------------------

def describe_alarms(self):
    """DescribeAlarms as the CloudWatch API reference has it, where moto is lenient:
    AlarmNames holds at most 100 names of 1 to 255 characters and MaxRecords is within
    1..100 (ValidationError); without AlarmTypes only metric alarms are answered, "even
    if composite alarms exist"; pages of MaxRecords (default 50) alarms, metric ones
    first, by NextToken (one not handed out is InvalidNextToken). Not modelled: IAM,
    which answers composite alarms only to a grant on "*"."""
    maybe_throttle("DescribeAlarms")
    names = self._get_param("AlarmNames", [])
    if len(names) > 100:
        raise cw_exceptions.ValidationError(
            f"1 validation error detected: Value at 'alarmNames' failed to satisfy "
            f"constraint: Member must have length less than or equal to 100 ({len(names)})")
    if any(not 1 <= len(n) <= 255 for n in names):
        raise cw_exceptions.ValidationError(
            "1 validation error detected: Value at 'alarmNames' failed to satisfy "
            "constraint: Member must satisfy constraint: [Member must have length less "
            "than or equal to 255, Member must have length greater than or equal to 1]")
    size = self._get_param("MaxRecords")
    if size is not None and not 1 <= int(size) <= 100:
        raise cw_exceptions.ValidationError(
            f"1 validation error detected: Value '{size}' at 'maxRecords' failed to satisfy "
            f"constraint: Member must have value between 1 and 100")
    token = self._get_param("NextToken")
    with LOCK:
        known = token is None or token in ALARM_TOKENS
    if not known:
        raise InvalidNextToken("The service cannot recognize the token")
    types = self._get_param("AlarmTypes") or ["MetricAlarm"]
    answer = ORIGINAL_DESCRIBE_ALARMS(self).result
    alarms = [("MetricAlarms", a) for a in answer["MetricAlarms"] if "MetricAlarm" in types]
    alarms += [("CompositeAlarms", a) for a in answer["CompositeAlarms"]
               if "CompositeAlarm" in types]
    with LOCK:
        start = ALARM_TOKENS.get(token)
    items, rest = page(alarms, int(size or 50), start)
    result = {"MetricAlarms": [a for k, a in items if k == "MetricAlarms"],
              "CompositeAlarms": [a for k, a in items if k == "CompositeAlarms"]}
    if rest:
        # Opaque, as AWS's: only a token handed out is taken back.
        handed = os.urandom(12).hex()
        with LOCK:
            ALARM_TOKENS[handed] = rest
        result["NextToken"] = handed
    return ActionResult(result)


ALARM_TOKENS = {}


class InvalidNextToken(ServiceException):
    code = "InvalidNextToken"


ORIGINAL_DESCRIBE_ALARMS = CloudWatchResponse.describe_alarms
CloudWatchResponse.describe_alarms = describe_alarms
# moto's PutMetricAlarm reads AlarmRule "to re-use this method for composite alarms", but
# routes no PutCompositeAlarm to it.
CloudWatchResponse.put_composite_alarm = CloudWatchResponse.put_metric_alarm

CLOUDWATCH_RPC = "/service/GraniteServiceVersion20100801/operation/"


def cbor_to_json(value):
    """A decoded CBOR request as the JSON protocol writes it (AWS JSON 1.0)."""
    if isinstance(value, dict):
        return {k: cbor_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cbor_to_json(v) for v in value]
    if isinstance(value, datetime.datetime):
        return aware(value).timestamp()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    return value


def cloudwatch_rpc(app, environ, start_response):
    """CloudWatch over Smithy RPC v2 CBOR, which the SDK for Rust speaks and moto does not:
    the request is handed to moto in AWS JSON 1.0 (which CloudWatch also serves), and its
    answer, or error, is written back in CBOR, each member by the operation's shape."""
    operation = environ["PATH_INFO"][len(CLOUDWATCH_RPC):]
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(size)
    params = RpcV2CBORParser()._initial_body_parse(body) or {}
    as_json = json.dumps(cbor_to_json(params)).encode()
    inner = dict(environ)
    inner.update({"PATH_INFO": "/", "CONTENT_TYPE": "application/x-amz-json-1.0",
                  "CONTENT_LENGTH": str(len(as_json)), "wsgi.input": io.BytesIO(as_json),
                  "HTTP_X_AMZ_TARGET": f"GraniteServiceVersion20100801.{operation}"})
    inner.pop("HTTP_SMITHY_PROTOCOL", None)
    answered = {}
    chunks = app(inner, lambda status, headers, *_: answered.update(status=status,
                                                                     headers=headers))
    text = b"".join(chunks)
    status = answered["status"]
    out = bytearray()
    if status.startswith("2"):
        shape = CLOUDWATCH_MODEL.operation_model(operation).output_shape
        parsed = JSONParser().parse({"body": text, "headers": {}, "status_code": 200}, shape)
        parsed.pop("ResponseMetadata", None)
        if shape is not None:
            RpcV2CBORSerializer()._serialize_data_item(out, parsed, shape)
    else:
        try:
            error = json.loads(text or b"{}")
        except ValueError:
            error = {"__type": "InternalFailure", "message": text[:200].decode(errors="replace")}
        code = error.get("__type", "InternalFailure").rpartition("#")[2]
        message = error.get("message") or error.get("Message") or ""
        writer = RpcV2CBORSerializer()
        out.extend(writer._get_initial_byte(writer.MAP_MAJOR_TYPE, 2))
        for item in ("__type", code, "message", message):
            writer._serialize_type_string(out, item, None, None)
    # CloudWatch is awsQueryCompatible: an error's query-protocol code rides along in
    # x-amzn-query-error ("ValidationError;Sender"), which the SDKs read.
    kept = [(k, v) for k, v in answered["headers"] if k.lower() == "x-amzn-query-error"]
    start_response(status, kept + [("Content-Type", "application/cbor"),
                                   ("smithy-protocol", "rpc-v2-cbor"),
                                   ("Content-Length", str(len(out)))])
    return [bytes(out)]


# --- The control endpoint ---------------------------------------------------------------

def most_in_flight(comment):
    """The most invocations that ran at once, of the commands whose comment has `comment`."""
    moments = []
    with LOCK:
        for regions in ssm_models.ssm_backends.values():
            for backend in regions.values():
                for command in backend._commands:
                    if comment not in (command.comment or ""):
                        continue
                    for inv in command.invocations:
                        if inv.get("_started") is not None:
                            moments.append((inv["_started"], 1))
                            moments.append((inv.get("_ended", float("inf")), -1))
    most = running = 0
    # At a tie an end comes before a start: a slot freed and taken at once is one.
    for _, step in sorted(moments, key=lambda m: (m[0], m[1])):
        running += step
        most = max(most, running)
    return most


def with_control(app):
    def wsgi(environ, start_response):
        if environ.get("PATH_INFO") == "/_shipit/ssm" and environ["REQUEST_METHOD"] == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            posted = json.loads(environ["wsgi.input"].read(size) or b"{}")
            with LOCK:
                CONTROL.clear()
                CONTROL.update(DEFAULTS)
                CONTROL.update(posted)
                BUCKETS.clear()
                PARAM_STALE.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b"{}"]
        if environ.get("PATH_INFO") == "/_shipit/in_flight" and environ["REQUEST_METHOD"] == "GET":
            comment = environ.get("QUERY_STRING", "")
            seen = {"most": most_in_flight(comment)}
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(seen).encode()]
        if environ.get("PATH_INFO", "").startswith(CLOUDWATCH_RPC):
            return cloudwatch_rpc(app, environ, start_response)
        operation = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
        lose = False
        with LOCK:
            rule = CONTROL["lost_answers"].get(operation)
        if rule:
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(size)
            environ["wsgi.input"] = io.BytesIO(body)
            with LOCK:
                rule = CONTROL["lost_answers"].get(operation)
                if isinstance(rule, int):
                    rule = {"count": rule}
                lose = rule["count"] > 0 and rule.get("contains", "").encode() in body
                if lose:
                    CONTROL["lost_answers"][operation] = dict(rule, count=rule["count"] - 1)
        if lose:
            # Done as asked; the answer is what the client gets when it never arrives.
            for _ in app(environ, lambda *a, **k: None):
                pass
            body = json.dumps({"__type": "InternalServerError",
                               "message": "the answer was lost"}).encode()
            start_response("500 Internal Server Error",
                           [("Content-Type", "application/x-amz-json-1.1"),
                            ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)
    return wsgi


if __name__ == "__main__":
    port = int(sys.argv[1])
    # Step Functions reaches Lambda (and other services) through the server's own port.
    os.environ.setdefault("MOTO_PORT", str(port))
    # Stop cleanly on SIGTERM (scripts/test's exit), as moto_server does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main_app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, with_control(main_app), threaded=True)
