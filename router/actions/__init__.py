"""Action types, registered in one place: adding one is a module plus one line here."""

from __future__ import annotations

from router.actions.base import Action, Delivery
from router.actions.file import FileAction
from router.actions.forward import ForwardAction
from router.actions.slack import SlackAction

ACTION_TYPES: dict[str, type[Action]] = {cls.type_name: cls for cls in (ForwardAction, SlackAction, FileAction)}

__all__ = ["ACTION_TYPES", "Action", "Delivery"]
