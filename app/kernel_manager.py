"""The app's kernel manager: jupyter_server's, with a cap on how many kernels run at once.

Voila starts one kernel per page load, and each soundsight kernel holds
TensorFlow and both models (about 580 MB). `CappedKernelManager` refuses to
start a kernel past `max_kernels`: the page load gets an HTTP 503 whose reason,
shown by Voila's error page, says the app is busy. It never shuts down a
kernel to make room, since a kernel without a connected page may be one whose
page is still loading; abandoned kernels are left to jupyter_server's idle
culler (`MappingKernelManager.cull_idle_timeout`), which app.serve turns on.
"""
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.web import HTTPError
from traitlets import Integer

DEFAULT_MAX_KERNELS = 4


def busy_message(max_kernels: int) -> str:
    """The sentence a refused page shows. ASCII only: it is also the reason in the HTTP status line."""
    return (f"soundsight is busy: {max_kernels} sessions are open, the most it runs at once. "
            f"Close a soundsight tab you no longer use, or retry in a few minutes.")


class CappedKernelManager(AsyncMappingKernelManager):
    """An AsyncMappingKernelManager that starts at most `max_kernels` kernels at a time."""

    max_kernels = Integer(DEFAULT_MAX_KERNELS, min=1, config=True,
                          help="How many kernels may run at once; a page load past it gets HTTP 503.")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Kernels between the cap check and their entry in list_kernel_ids(): without them two page
        # loads at once could both pass the check.
        self._starting_kernel_ids: set[str] = set()

    async def start_kernel(self, *, kernel_id: str | None = None, **kwargs) -> str:
        """Starts a kernel as AsyncMappingKernelManager does and returns its id.

        Raises tornado.web.HTTPError(503) when `max_kernels` kernels are running or starting;
        an id of a running kernel is passed on, as it starts nothing.
        """
        if kernel_id is not None and kernel_id in self:
            return await super().start_kernel(kernel_id=kernel_id, **kwargs)
        # Nothing awaits between this check and the reservation, so concurrent starts see each other.
        in_use = set(self.list_kernel_ids()) | self._starting_kernel_ids
        if len(in_use) >= self.max_kernels:
            message = busy_message(self.max_kernels)
            # Voila's error page shows the reason; the log message goes to the server's log.
            raise HTTPError(503, "%s", message, reason=message)
        kernel_id = kernel_id or self.new_kernel_id()
        self._starting_kernel_ids.add(kernel_id)
        try:
            return await super().start_kernel(kernel_id=kernel_id, **kwargs)
        finally:
            self._starting_kernel_ids.discard(kernel_id)
