"""What the tests share, one copy of each: a real router (servers), real destinations (http), the
store read through its own interface (store), processes, raw sockets, logs, metrics, signing and
the command line. Test modules import from here: `from support import RouterServer, wait_until`.
"""

from support.cli import CliResult, run_cli
from support.http import (
    Downstream,
    HttpServer,
    PathServer,
    Recorded,
    Reply,
    Resetter,
    ScriptedServer,
    SlackStandIn,
    free_port,
    refused_url,
)
from support.logs import VALIDATE_LINE, assert_clean_log, json_lines, log_problems, log_size, tail_log
from support.metrics import Scrape, per_process_counts, scrape
from support.paths import PROJECT_ROOT, atomic_write
from support.processes import (
    WorkersSurvive,
    alive,
    children_of,
    delivery_pids,
    healthy,
    healthz,
    kill9,
    kill_router_hard,
    master_pid,
    not_accepting,
    signal_master,
    store_open_by,
    term_and_wait,
    wait_exit,
    wait_workers,
    worker_pids,
)
from support.raw import (
    DOCUMENTED_STATUSES,
    LAST_CHUNK,
    RawResponse,
    accepted_by,
    chunk,
    host_port,
    open_request,
    post_head,
    raw_request,
    read_response,
)
from support.servers import RouterServer, ServedRouter, StartupError
from support.signing import (
    HMAC_SECRET,
    SECRET_ENV,
    UNITARY_SECRET,
    VIDEOID_TOKEN,
    dumps,
    indent,
    new_p256_key,
    public_pem,
    sign_hmac,
    sign_panjaya,
    sign_unitary,
)
from support.store import (
    FAST_RETRY,
    FINAL_STATES,
    attempts_of,
    events_count,
    jobs_count,
    jobs_of,
    post_event,
    wait_one_settled,
    wait_settled,
)
from support.waiting import wait_until

__all__ = [
    "DOCUMENTED_STATUSES", "FAST_RETRY", "FINAL_STATES", "HMAC_SECRET", "LAST_CHUNK", "PROJECT_ROOT", "SECRET_ENV",
    "UNITARY_SECRET", "VALIDATE_LINE", "VIDEOID_TOKEN", "CliResult", "Downstream", "HttpServer", "PathServer",
    "RawResponse", "Recorded", "Reply", "Resetter", "RouterServer", "Scrape", "ScriptedServer", "ServedRouter",
    "SlackStandIn", "StartupError", "WorkersSurvive", "accepted_by", "alive", "assert_clean_log", "atomic_write",
    "attempts_of", "children_of", "delivery_pids", "chunk", "dumps", "events_count", "free_port", "healthy", "healthz", "host_port",
    "indent", "jobs_count", "jobs_of", "json_lines", "kill9", "kill_router_hard", "log_problems", "log_size",
    "master_pid", "new_p256_key", "not_accepting", "open_request", "per_process_counts", "post_event", "post_head",
    "public_pem", "raw_request", "read_response", "refused_url", "run_cli", "scrape", "sign_hmac", "sign_panjaya",
    "sign_unitary", "signal_master", "store_open_by", "tail_log", "term_and_wait", "wait_exit", "wait_one_settled",
    "wait_settled", "wait_until", "wait_workers", "worker_pids",
]
