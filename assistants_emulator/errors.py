"""Error bodies in each backend's real shape (protocol.md section 3)."""

from __future__ import annotations


class ApiError(Exception):
    """An OpenAI-envelope error: {"error": {"message", "type", "param", "code"}}.

    Azure OpenAI Assistants and Foundry classic agents use the same envelope for
    resource-level errors, so one class serves all three backends.
    """

    def __init__(self, status: int, message: str, *, type: str | None = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class RawError(Exception):
    """An error whose body is given verbatim (Azure gateway shapes: code is a string number)."""

    def __init__(self, status: int, body: dict, headers: dict | None = None, *, gateway: bool = False):
        super().__init__(str(body))
        self.status = status
        self._body = body
        self.headers = headers or {}
        # Answered by the API gateway in front of the service: none of the service's own headers
        # (x-ratelimit-*, openai-*) are sent with it.
        self.gateway = gateway

    def body(self) -> dict:
        return self._body


def not_found(kind: str, obj_id: str) -> ApiError:
    return ApiError(404, f"No {kind} found with id '{obj_id}'.")


def azure_resource_not_found() -> RawError:
    # Azure's routing 404 (deployment-scoped assistants path, unknown/missing api-version).
    return RawError(404, {"error": {"code": "404", "message": "Resource not found"}})


AZURE_401_MESSAGE = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                     "provide a valid key for an active subscription and use a correct regional API "
                     "endpoint for your resource.")
FOUNDRY_401_MESSAGE = ("Unauthorized. Access token is missing, invalid, audience is incorrect "
                       "(https://ai.azure.com), or have expired.")
OPENAI_NO_KEY_MESSAGE = ("You didn't provide an API key. You need to provide your API key in an Authorization "
                         "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
                         "field (with blank username) if you're accessing the API from your browser and are "
                         "not using an API key. You can obtain an API key from "
                         "https://platform.openai.com/account/api-keys.")
INVALID_BETA_MESSAGE = ("You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try "
                        "again by setting the header 'OpenAI-Beta: assistants=v2'.")
INVALID_JSON_MESSAGE = ("We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                        "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
                        "contact us through our help center at help.openai.com.)")


def mask_key(key: str) -> str:
    """Mask a credential the way api.openai.com does (first 8, stars, last 4); never echo it whole."""
    if len(key) > 12:
        return key[:8] + "*" * (len(key) - 12) + key[-4:]
    if len(key) > 4:
        return key[:2] + "*" * (len(key) - 2)
    return "*" * len(key)


def openai_401(key: str | None) -> RawError:
    if not key:
        return RawError(401, {"error": {"message": OPENAI_NO_KEY_MESSAGE, "type": "invalid_request_error",
                                        "param": None, "code": None}})
    msg = (f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
           "https://platform.openai.com/account/api-keys.")
    return RawError(401, {"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                    "code": "invalid_api_key"}})


def azure_401() -> RawError:
    return RawError(401, {"error": {"code": "401", "message": AZURE_401_MESSAGE}})


def foundry_401() -> RawError:
    return RawError(401, {"error": {"code": "401", "message": FOUNDRY_401_MESSAGE}})


def invalid_beta() -> RawError:
    return RawError(400, {"error": {"message": INVALID_BETA_MESSAGE, "type": "invalid_request_error",
                                    "param": None, "code": "invalid_beta"}})
