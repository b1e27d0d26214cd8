"""The API's JSON parser: DRF's, behind the one check of size and depth every door uses (``runs_app.web.bodies``)."""

from __future__ import annotations

from rest_framework.parsers import JSONParser

from runs_app.web.bodies import parse_json_body


class GuardedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        return parse_json_body(stream.read() if stream is not None else b"")
