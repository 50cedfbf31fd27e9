"""A DOTS client provisioned with an ordered list of servers (use case 3.1.7): the next server is
signalled when the current one is unreachable, says 5.03 or reports attack-exceeded-capability.

    python docs/examples/fallback.py pki/ localhost:24651 localhost:24646
"""

import asyncio
import json
import sys

from agent.client import FallbackClient, FallbackServer
from agent.transports.credentials import Credentials


async def main(pki: str, servers: list[str]) -> None:
    creds = Credentials.from_pki_dir(pki, "client")
    provisioned = [FallbackServer(s, creds, name=f"server-{i}") for i, s in enumerate(servers)]
    async with FallbackClient(provisioned, connect_timeout=3) as fb:
        await fb.protect(target_prefixes=["192.0.2.0/24"], lifetime=600)
        index = await fb.wait_mitigated(timeout=30)
        print(f"mitigated by {provisioned[index].name} ({servers[index]})")
        print(json.dumps(fb.state(), indent=1, default=str))
        await fb.withdraw()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
