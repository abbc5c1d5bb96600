"""The synchronous client in the style of seed 001's quick example: no asyncio in sight.

Usage:
    APPORTION_URL=http://127.0.0.1:8080 APPORTION_API_KEY=... python examples/sync_quickstart.py
"""

import time

from apportion.clients import Apportion

client = Apportion()  # arguments > APPORTION_* > ~/.config/apportion/credentials

# Where would 2 GPUs go?  Nothing is held.
print("allocate:", client.allocate({"gpus": 2}).placement.model_dump())

# Hold 1 GPU while we work; released when the block ends.
with client.hold({"gpus": 1}, lease_seconds=30) as hold:
    print("holding", hold.allocation_id, "on", hold.result.placement.node_id)

# Submit a job and wait until it is finished, as seed 001's example does.
job_id = client.submit(["python3", "-c", "print('hello from a job')"], name="quickstart")
print("Submitted", job_id)
while client.job(job_id).status not in {"completed", "failed", "cancelled"}:
    time.sleep(0.2)
print("status:", client.job(job_id).status)
print("output:", "".join(client.logs(job_id)).strip())

client.close()
