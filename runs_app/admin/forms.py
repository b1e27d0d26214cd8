"""Admin forms: they check what a person typed (with field-level errors) before a service is called.

The limits repeat the service's (``validation.validate_metadata``) so an operator sees the error on the
field they typed; the service validates again and stays the authority.
"""

from __future__ import annotations

import json

from django import forms
from django.core.exceptions import ValidationError

from runs_app.conf import app_settings
from runs_app.services import validation


def _check_key(key: str) -> None:
    if len(key) > validation.METADATA_MAX_KEY_LENGTH:
        raise ValidationError(
            f"Keys are limited to {validation.METADATA_MAX_KEY_LENGTH} characters; this one has {len(key)}.",
            code="key_too_long",
        )


def _check_value(value: str) -> None:
    if len(value) > validation.METADATA_MAX_VALUE_LENGTH:
        raise ValidationError(
            f"Values are limited to {validation.METADATA_MAX_VALUE_LENGTH} characters; this one has {len(value)}.",
            code="value_too_long",
        )


class MetadataEntryForm(forms.Form):
    # No max_length: the browser would silently truncate, and the operator should see the limit instead.
    key = forms.CharField(required=False, strip=True, validators=[_check_key],
                          widget=forms.TextInput(attrs={"size": 40}))
    value = forms.CharField(required=False, strip=False, validators=[_check_value],
                            widget=forms.TextInput(attrs={"size": 80}))

    def clean(self):
        data = super().clean()
        if not data.get("key") and data.get("value") and "key" not in self.errors:
            self.add_error("key", "Give a key for this value, or clear the value to drop the row.")
        return data


class BaseMetadataFormSet(forms.BaseFormSet):
    def clean(self):
        if any(self.errors):
            return
        keys = [f.cleaned_data.get("key") for f in self.forms if f.cleaned_data.get("key")]
        if len(keys) > validation.METADATA_MAX_KEYS:
            raise ValidationError(f"At most {validation.METADATA_MAX_KEYS} keys are allowed; you gave {len(keys)}.")
        seen = set()
        for form in self.forms:
            key = form.cleaned_data.get("key")
            if key and key in seen:
                form.add_error("key", f"The key {key!r} appears more than once.")
            seen.add(key)

    @property
    def metadata(self) -> dict:
        return {f.cleaned_data["key"]: f.cleaned_data.get("value") or ""
                for f in self.forms if f.cleaned_data.get("key")}


def metadata_formset(*, metadata: dict | None = None, data=None) -> BaseMetadataFormSet:
    """Existing pairs plus blank rows up to the limit (at least three), so keys can be added."""
    initial = [{"key": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in (metadata or {}).items()]
    formset_class = forms.formset_factory(
        MetadataEntryForm, formset=BaseMetadataFormSet, max_num=100, absolute_max=100,
        extra=max(validation.METADATA_MAX_KEYS - len(initial), 3),
    )
    return formset_class(data=data, initial=initial, prefix="metadata")


class ToolOutputsForm(forms.Form):
    """One required output per pending tool call, labelled with the function's name."""

    FIELD_PREFIX = "output__"

    def __init__(self, *args, tool_calls: list[dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.tool_calls = tool_calls
        for call in tool_calls:
            function = call.get("function") or {}
            self.fields[self.FIELD_PREFIX + call["id"]] = forms.CharField(
                label=f"{function.get('name') or call.get('type', 'tool')} ({call['id']})",
                required=True, strip=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
            )

    def calls_with_fields(self):
        """(call, pretty arguments, bound field) for the template."""
        for call in self.tool_calls:
            arguments = (call.get("function") or {}).get("arguments", "")
            yield call, pretty_json_text(arguments), self[self.FIELD_PREFIX + call["id"]]

    def tool_outputs(self, extra_post=None) -> list[dict]:
        outputs = [{"tool_call_id": call["id"], "output": self.cleaned_data[self.FIELD_PREFIX + call["id"]]}
                   for call in self.tool_calls]
        # Outputs posted for calls that are not pending (a stale page, a forged form) go to the service,
        # which names them, instead of being dropped silently.
        known = {c["id"] for c in self.tool_calls}
        for name, value in (extra_post or {}).items():
            if name.startswith(self.FIELD_PREFIX) and name[len(self.FIELD_PREFIX):] not in known:
                outputs.append({"tool_call_id": name[len(self.FIELD_PREFIX):], "output": value})
        return outputs


class ThreadImportForm(forms.Form):
    thread_id = forms.CharField(max_length=128, help_text="The remote thread id, e.g. thread_abc123.",
                                widget=forms.TextInput(attrs={"size": 50}))
    connection = forms.ChoiceField(choices=())

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = list(app_settings.CONNECTIONS)
        self.fields["connection"].choices = [(n, n) for n in names]
        self.fields["connection"].initial = app_settings.DEFAULT_CONNECTION


def parse_metadata_lines(text: str) -> dict:
    metadata = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "=" not in line:
            raise ValidationError(f"Line {number}: write key=value.")
        key, value = line.split("=", 1)
        key = key.strip()
        if not key:
            raise ValidationError(f"Line {number}: the key is empty.")
        if key in metadata:
            raise ValidationError(f"Line {number}: the key {key!r} appears twice.")
        metadata[key] = value.strip()
    return metadata


class RunStartForm(forms.Form):
    assistant_id = forms.CharField(max_length=128, widget=forms.TextInput(attrs={"size": 50}),
                                   help_text="The assistant to run, e.g. asst_abc123.")
    instructions = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
                                   help_text="Overrides the assistant's instructions for this run only.")
    metadata = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
                               help_text="One key=value per line (at most 16 keys; keys up to 64 characters, "
                                         "values up to 512).")

    def clean_metadata(self):
        metadata = parse_metadata_lines(self.cleaned_data.get("metadata") or "")
        try:
            validation.validate_metadata(metadata)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["metadata"]) from exc
        return metadata


def pretty_json_text(value) -> str:
    """JSON text or objects, indented for reading; text that is not JSON is returned as it is."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        return str(value)
