"""Submit a 2-worker GPU job and follow its events until it ends.

Usage:
    APPORTION_URL=http://127.0.0.1:8080 APPORTION_API_KEY=... python examples/submit_and_follow.py

The URL, WebSocket URL and key come from the arguments of AsyncApportion, else the
APPORTION_* variables, else the credentials file that `apportion serve` writes.
Exits 0 when the job completed, 1 otherwise.
"""

import asyncio
import sys

from apportion.clients import AsyncApportion

WORKER = (
    "import os; print('worker', os.environ.get('APPORTION_WORKER_INDEX'), "
    "'of', os.environ.get('APPORTION_NUM_WORKERS'), "
    "'GPUs', os.environ.get('CUDA_VISIBLE_DEVICES'))"
)
JOB_EVENTS = {"job_queued", "job_scheduled", "job_started", "job_completed"}


async def main() -> int:
    async with AsyncApportion() as client:
        # Remember where the event log is now, so no event of our job can be missed.
        since = (await client.system_status())["latest_event_seq"]
        job_id = await client.submit(
            ["python3", "-c", WORKER], gpus=1, workers=2, name="two-workers"
        )
        print(f"submitted {job_id}")
        async with client.events(since=since, types=JOB_EVENTS) as events:
            async for event in events:
                if event.payload.get("job_id") != job_id:
                    continue
                print(f"event {event.seq} {event.type}")
                if event.type == "job_scheduled":
                    for placement in event.payload.get("allocation") or []:
                        print(
                            f"  placed on {placement['cluster_id']}/{placement['node_id']}"
                            f" GPUs {','.join(placement.get('gpus') or [])}"
                        )
                if event.type == "job_completed":
                    break
        job = await client.wait(job_id, timeout=60)
        print(f"job {job_id} {job.status} (return code {job.return_code})")
        async for chunk in client.logs(job_id):
            print(chunk, end="")
        return 0 if job.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
