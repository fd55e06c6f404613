"""The floor: a bare Flask app that answers "OK", run under the same gunicorn settings as the router."""

from flask import Flask

app = Flask("floor")


@app.post("/hooks/<provider>")
def hook(provider: str) -> str:
    return "OK"
