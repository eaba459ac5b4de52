"""Send the public Celery tasks by name (``send_task``), validated against the contract.

The Celery app here knows nothing of the workers' code: it gets the broker URL, declares the
contract's queues on its exchange, and routes each task to its queue as the contract says.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from npc_memory_client.contract import Contract, load_contract


class TaskSender:
    """Enqueue public tasks on a broker.

    Args:
        broker_url: the workers' broker (``BROKER_URL``/``REDIS_URL`` of the deployment).
        contract: default: the contract shipped with this client.
    """

    def __init__(self, broker_url: str, contract: Contract | None = None):
        self.contract = contract or load_contract()
        self._exchange = Exchange(self.contract.exchange, type="direct")
        self._queues = {q: Queue(q, self._exchange, routing_key=q) for q in self.contract.queues}
        self.app = Celery("npc_memory_client", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"],
                             task_queues=list(self._queues.values()),
                             task_create_missing_queues=False,
                             task_default_queue=self.contract.queues[0],
                             task_default_exchange=self.contract.exchange,
                             task_default_routing_key=self.contract.queues[0],
                             broker_connection_retry_on_startup=True)

    def __enter__(self) -> TaskSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()

    def enqueue(self, task_name: str, payload: dict, *, task_id: str | None = None,
                countdown: float | None = None) -> str:
        """Validate ``payload`` (the task's kwargs) and send ``task_name`` to its queue.

        Returns:
            The task id (``task_id`` when given: the workers' ledger dedupes on it).

        Raises:
            UnknownTask: not a public task name.
            InvalidPayload: the payload violates the task's schema (nothing is sent).
            kombu.exceptions.OperationalError: the broker is unreachable.
        """
        self.contract.validate(task_name, payload)
        queue = self._queues[self.contract.queue_of(task_name)]
        return self.app.send_task(task_name, kwargs=payload, task_id=task_id, queue=queue,
                                  routing_key=queue.routing_key, exchange=self._exchange,
                                  countdown=countdown).id
