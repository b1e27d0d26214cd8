"""Representations in the service's own field names and shapes, plus a ``mirror`` object; request bodies.

Output serializers only read the mirror. Request serializers check types and shapes only; the services
check the rest (metadata limits, pending tool calls) and the service itself has the final word.
"""

from __future__ import annotations

import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from runs_app.mirror import representation
from runs_app.models import RunEvent, RunStatus

MAX_INT = 2**31 - 1


@extend_schema_field({"type": "integer", "nullable": True, "description": "Unix time in seconds."})
class UnixTimeField(serializers.Field):
    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)


@extend_schema_field({"type": "string", "nullable": True})
class BlankAsNullField(serializers.Field):
    """The mirror stores absent strings as ''; the protocol says null."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, value):
        return value or None


def _constant(value: str):
    """The ``object`` field: always this value."""

    # A pattern, not an enum: drf-spectacular would make one enum component per "object" field, all colliding.
    @extend_schema_field({"type": "string", "pattern": "^" + re.escape(value) + "$"})
    class Constant(serializers.Field):
        def __init__(self):
            super().__init__(read_only=True)

    return Constant()


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField(required=False)
    completion_tokens = serializers.IntegerField(required=False)
    total_tokens = serializers.IntegerField(required=False)


# --- the mirror object --------------------------------------------------------------------------------
# Output serializers declare the shapes for the schema; every object is made by runs_app.mirror.representation,
# the one representation of the API, the live pages and the feed.

class MirrorSerializer(serializers.Serializer):
    connection = serializers.CharField(read_only=True, help_text="The RUNS_APP connection the object lives on.")
    synced_at = serializers.DateTimeField(read_only=True, allow_null=True,
                                          help_text="Last time the mirror applied a payload of this object.")
    first_seen_at = serializers.DateTimeField(read_only=True)


class ThreadMirrorSerializer(MirrorSerializer):
    tracked = serializers.BooleanField(read_only=True,
                                       help_text="Runs created elsewhere on this thread are discovered.")


class RunMirrorSerializer(MirrorSerializer):
    lag_seconds = serializers.FloatField(
        read_only=True, allow_null=True,
        help_text="Seconds since the last sync while the run is active; null once terminal or never synced.")
    status_changed_at = serializers.DateTimeField(read_only=True, allow_null=True)
    next_poll_at = serializers.DateTimeField(read_only=True, allow_null=True)
    polls = serializers.IntegerField(read_only=True)
    stuck = serializers.BooleanField(read_only=True, help_text="In queued/in_progress/cancelling longer than "
                                                               "STUCK_AFTER.")
    stuck_since = serializers.DateTimeField(read_only=True, allow_null=True)
    expiring = serializers.BooleanField(read_only=True, help_text="Waiting in requires_action close to expires_at.")
    answered_call_ids = serializers.ListField(child=serializers.CharField(), read_only=True)


class RepresentedSerializer(serializers.Serializer):
    """An output serializer whose objects come from ``representation``: the fields document them."""

    represent = None

    def to_representation(self, instance):
        return type(self).represent(instance)


# --- objects --------------------------------------------------------------------------------------------

class ThreadSerializer(RepresentedSerializer):
    represent = staticmethod(representation.thread_object)

    id = serializers.CharField(read_only=True)
    object = _constant("thread")
    created_at = UnixTimeField()
    metadata = serializers.DictField(child=serializers.CharField(), read_only=True)
    tool_resources = serializers.JSONField(read_only=True, allow_null=True)
    mirror = ThreadMirrorSerializer(read_only=True)


class RunSerializer(RepresentedSerializer):
    represent = staticmethod(representation.run_object)

    id = serializers.CharField(read_only=True)
    object = _constant("thread.run")
    created_at = UnixTimeField()
    thread_id = serializers.CharField(read_only=True)
    assistant_id = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(choices=RunStatus.choices, read_only=True)
    required_action = serializers.JSONField(read_only=True, allow_null=True)
    last_error = serializers.JSONField(read_only=True, allow_null=True)
    expires_at = UnixTimeField()
    started_at = UnixTimeField()
    cancelled_at = UnixTimeField()
    failed_at = UnixTimeField()
    completed_at = UnixTimeField()
    incomplete_details = serializers.JSONField(read_only=True, allow_null=True)
    model = serializers.CharField(read_only=True)
    instructions = serializers.CharField(read_only=True)
    tools = serializers.ListField(child=serializers.JSONField(), read_only=True)
    tool_resources = serializers.JSONField(read_only=True, allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField(), read_only=True)
    usage = UsageSerializer(read_only=True, allow_null=True)
    temperature = serializers.FloatField(read_only=True, allow_null=True)
    top_p = serializers.FloatField(read_only=True, allow_null=True)
    max_prompt_tokens = serializers.IntegerField(read_only=True, allow_null=True)
    max_completion_tokens = serializers.IntegerField(read_only=True, allow_null=True)
    truncation_strategy = serializers.JSONField(read_only=True, allow_null=True)
    tool_choice = serializers.JSONField(read_only=True, allow_null=True)
    response_format = serializers.JSONField(read_only=True, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(read_only=True, allow_null=True)
    mirror = RunMirrorSerializer(read_only=True)


class RunStepSerializer(RepresentedSerializer):
    represent = staticmethod(representation.step_object)

    id = serializers.CharField(read_only=True)
    object = _constant("thread.run.step")
    created_at = UnixTimeField()
    run_id = serializers.CharField(read_only=True)
    assistant_id = serializers.CharField(read_only=True, allow_null=True)
    thread_id = serializers.CharField(read_only=True)
    type = serializers.CharField(read_only=True, help_text="message_creation, tool_calls, or a type the service "
                                                           "added since (e.g. Foundry's activities), kept as is.")
    status = serializers.CharField(read_only=True)
    step_details = serializers.JSONField(read_only=True)
    last_error = serializers.JSONField(read_only=True, allow_null=True)
    expires_at = UnixTimeField()
    cancelled_at = UnixTimeField()
    failed_at = UnixTimeField()
    completed_at = UnixTimeField()
    metadata = serializers.DictField(child=serializers.CharField(), read_only=True)
    usage = UsageSerializer(read_only=True, allow_null=True)
    mirror = MirrorSerializer(read_only=True)


class MessageSerializer(RepresentedSerializer):
    represent = staticmethod(representation.message_object)

    id = serializers.CharField(read_only=True)
    object = _constant("thread.message")
    created_at = UnixTimeField()
    thread_id = serializers.CharField(read_only=True)
    status = serializers.CharField(read_only=True, allow_null=True)
    incomplete_details = serializers.JSONField(read_only=True, allow_null=True)
    completed_at = UnixTimeField()
    incomplete_at = UnixTimeField()
    role = serializers.CharField(read_only=True)
    content = serializers.ListField(child=serializers.JSONField(), read_only=True)
    assistant_id = serializers.CharField(read_only=True, allow_null=True)
    run_id = serializers.CharField(read_only=True, allow_null=True)
    attachments = serializers.ListField(child=serializers.JSONField(), read_only=True)
    metadata = serializers.DictField(child=serializers.CharField(), read_only=True)
    mirror = MirrorSerializer(read_only=True)


class OperatorActionSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    at = serializers.DateTimeField(read_only=True)
    action = serializers.CharField(read_only=True)
    succeeded = serializers.BooleanField(read_only=True)
    sent = serializers.JSONField(read_only=True, help_text="What was sent, secret-looking values redacted.")
    answer = serializers.JSONField(read_only=True, allow_null=True)
    error = serializers.CharField(read_only=True)
    request_id = serializers.CharField(read_only=True)


class RunEventSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    kind = serializers.ChoiceField(choices=RunEvent.Kind.choices, read_only=True)
    from_status = BlankAsNullField()
    to_status = BlankAsNullField()
    source = serializers.CharField(read_only=True)
    observed_at = serializers.DateTimeField(read_only=True)
    user = serializers.SerializerMethodField()
    action = OperatorActionSerializer(source="operator_action", read_only=True, allow_null=True)

    @extend_schema_field({"type": "string", "nullable": True})
    def get_user(self, event: RunEvent) -> str | None:
        return event.user.get_username() if event.user_id else None


# --- request bodies -----------------------------------------------------------------------------------
# Each has its own name: drf-spectacular names components after the serializer class.

class StrictCharField(serializers.CharField):
    """A string, never a number turned into one (the service refuses non-string metadata values)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _metadata_field(*, required=False, **kwargs):
    return serializers.DictField(
        child=StrictCharField(allow_blank=True, trim_whitespace=False), required=required, **kwargs,
        help_text="Up to 16 string keys (64 characters) with string values (512 characters).")


class NoUnknownFieldsMixin:
    """Refuse a field the protocol does not have, naming it, as the service does (DRF would drop it silently)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in self.fields)
            if unknown:
                raise serializers.ValidationError({unknown[0]: [
                    f"Unknown field; expected {', '.join(self.fields)}."]}, code="unknown_field")
        return super().to_internal_value(data)


class MessageCreateRequestSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = serializers.JSONField(help_text=(
        "A string, or a list of content parts: {\"type\": \"text\", \"text\": \"…\"}, "
        "{\"type\": \"image_file\", \"image_file\": {\"file_id\": \"…\"}}, "
        "{\"type\": \"image_url\", \"image_url\": {\"url\": \"https://…\"}}. Text may not be empty or "
        "only whitespace; at most 256,000 characters."))
    attachments = serializers.ListField(child=serializers.DictField(), required=False, allow_null=True,
                                        help_text='[{"file_id": "…", "tools": [{"type": "file_search"}]}]')
    metadata = _metadata_field(allow_null=True)


class ThreadCreateRequestSerializer(serializers.Serializer):
    messages = MessageCreateRequestSerializer(many=True, required=False)
    tool_resources = serializers.DictField(required=False, allow_null=True)
    metadata = _metadata_field(allow_null=True)


class ThreadImportRequestSerializer(serializers.Serializer):
    thread_id = serializers.CharField(max_length=128, help_text="The service's thread id, e.g. thread_abc123.")


class RunCreateRequestSerializer(serializers.Serializer):
    assistant_id = serializers.CharField(max_length=128)
    model = serializers.CharField(max_length=128, required=False, allow_null=True)
    instructions = serializers.CharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False)
    additional_instructions = serializers.CharField(required=False, allow_null=True, allow_blank=True,
                                                    trim_whitespace=False)
    additional_messages = MessageCreateRequestSerializer(many=True, required=False, allow_null=True)
    tools = serializers.ListField(child=serializers.DictField(), required=False, allow_null=True)
    metadata = _metadata_field(allow_null=True)
    temperature = serializers.FloatField(min_value=0, max_value=2, required=False, allow_null=True)
    top_p = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True)
    max_prompt_tokens = serializers.IntegerField(min_value=1, max_value=MAX_INT, required=False, allow_null=True)
    max_completion_tokens = serializers.IntegerField(min_value=1, max_value=MAX_INT, required=False,
                                                     allow_null=True)
    truncation_strategy = serializers.DictField(required=False, allow_null=True)
    tool_choice = serializers.JSONField(required=False, allow_null=True,
                                        help_text='"none", "auto", "required" or {"type": "function", ...}.')
    response_format = serializers.JSONField(required=False, allow_null=True,
                                            help_text='"auto" or {"type": "json_object" | "json_schema", ...}.')
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    stream = serializers.BooleanField(required=False, default=False,
                                      help_text="true: the response is the service's event stream.")


class ThreadAndRunCreateRequestSerializer(RunCreateRequestSerializer):
    additional_instructions = None
    additional_messages = None
    thread = ThreadCreateRequestSerializer(required=False, allow_null=True)
    tool_resources = serializers.DictField(required=False, allow_null=True)


class RunMetadataUpdateRequestSerializer(serializers.Serializer):
    metadata = _metadata_field(required=True)


class ToolOutputRequestSerializer(serializers.Serializer):
    tool_call_id = serializers.CharField(max_length=128)
    output = serializers.CharField(allow_blank=True, trim_whitespace=False)


class ToolOutputsSubmitRequestSerializer(serializers.Serializer):
    tool_outputs = ToolOutputRequestSerializer(many=True, allow_empty=False)
    stream = serializers.BooleanField(required=False, default=False,
                                      help_text="true: the response is the service's event stream.")


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    code = serializers.CharField(allow_null=True)
    param = serializers.CharField(allow_null=True, help_text="The field that was wrong, when one was.")
    request_id = serializers.CharField(allow_null=True, help_text="The service's request id, for its errors.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
