"""Middleware for sites that embed runs_app."""

from django.middleware.gzip import GZipMiddleware as DjangoGZipMiddleware


class GZipMiddleware(DjangoGZipMiddleware):
    """Django's GZipMiddleware, except for server-sent event streams: gzip holds back each event until its
    compressor flushes a block, which stalls a live relay. Use it in place of
    ``django.middleware.gzip.GZipMiddleware`` (system check ``runs_app.W002`` names the swap)."""

    def process_response(self, request, response):
        if response.get("Content-Type", "").startswith("text/event-stream"):
            return response
        return super().process_response(request, response)
