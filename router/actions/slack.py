"""`slack`: post to a Slack incoming webhook, following Slack's documented contract.

200 `ok` is success; 429 is retried after Retry-After (and holds the whole action meanwhile);
other 4xx (`invalid_payload`, `no_service`, `channel_not_found`, `channel_is_archived`, ...) are
permanent; 5xx are retried. Paced at one message per second by default, Slack's documented limit.

Values substituted into `text` (and into the `text` fields of `blocks`) have `&`, `<` and `>`
escaped, so a sender cannot mention `<!channel>` or mask a link; `| slack_raw` opts out.
"""

from __future__ import annotations

import json
from typing import Any

from router.actions import http
from router.actions.base import Action, Delivery
from router.config.fields import Field, as_duration, as_secret_url, as_structured_template, as_template
from router.errors import DeliveryError
from router.templates import StructuredTemplate, Template, TemplateError


class SlackAction(Action):
    type_name = "slack"
    default_rate = 1.0
    options = {
        "webhook_url": Field(as_secret_url, required=True),
        "text": Field(lambda ctx, value, path: as_template(ctx, value, path, slack=True)),
        "blocks": Field(lambda ctx, value, path: as_structured_template(ctx, value, path, slack=True)),
        "timeout": Field(as_duration, default=10.0),
    }

    def __init__(self, name: str, options: dict[str, Any], settings: Any):
        super().__init__(name, options, settings)
        self.webhook_url = options["webhook_url"]
        self.text: Template | None = options["text"]
        self.blocks: Template | StructuredTemplate | None = options["blocks"]

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[tuple[str | None, str]]:
        if options.get("text") is None and options.get("blocks") is None:
            return [(None, "a slack action needs 'text' (or 'blocks')")]
        return []

    def message(self, d: Delivery) -> dict[str, Any]:
        context = d.context()
        message: dict[str, Any] = {}
        try:
            if self.text is not None:
                message["text"] = self.text.render(context)
            if self.blocks is not None:
                blocks = self.blocks.render(context)
                if isinstance(blocks, str):
                    try:
                        blocks = json.loads(blocks)
                    except json.JSONDecodeError as exc:
                        raise DeliveryError(f"blocks did not render to JSON: {exc.msg}", retryable=False) from None
                if not isinstance(blocks, list):
                    raise DeliveryError("blocks must render to a JSON list", retryable=False)
                message["blocks"] = blocks
        except TemplateError as exc:
            raise DeliveryError(str(exc), retryable=False) from None
        return message

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        return {"webhook_url": "<secret>", "message": self.message(delivery)}

    def deliver(self, delivery: Delivery) -> int | None:
        body = json.dumps(self.message(delivery), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": http.USER_AGENT}
        response = http.send("POST", self.webhook_url.reveal(), headers=headers, data=body, timeout=self.timeout)
        if response.status == 200:
            delivery.response = http.snippet(response)
            return 200
        http.raise_for_status(response, self.settings.retry_after_cap)
        return response.status
