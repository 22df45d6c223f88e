"""The ClientApp for ``flwr run`` (simulation or deployment); see ``fedvtc.flwr_config``.

The SuperNode's node config picks the client (``partition-id``) and, in deployment, where this node
finds the data (``data-dir``) and keeps its client's state between messages (``state-dir``).
"""

from flwr.client import ClientApp
from flwr.common import Context

from fedvtc.algorithms import get_algorithm
from fedvtc.apps import set_quiet_env
from fedvtc.flwr_config import for_node, settings_from_context

set_quiet_env()


def client_fn(context: Context):
    cid, s = for_node(settings_from_context(context), context.node_config, run_id=context.run_id)
    return get_algorithm(s.algorithm_name).client(cid, s).to_client()


app = ClientApp(client_fn=client_fn)
