"""Embedding the DOTS client: ask for mitigation, follow its status, withdraw.

    python docs/examples/protect_me.py localhost:4646 pki/
"""

import asyncio
import sys

from agent.client import DotsClient
from agent.transports.credentials import Credentials


async def protect_me(server: str, pki: str) -> None:
    creds = Credentials.from_pki_dir(pki, "client")
    async with DotsClient(server, creds, transport="auto") as dots:
        result = await dots.mitigate(target_prefixes=["203.0.113.10/32"], ports=[443], protocols=[6])
        print(f"mid {result.mid}: {result.code}")
        async for update in dots.watch(result.mid):
            print("status:", update.scopes[0]["status"])
            break  # a real application keeps watching until the attack is over
        print("withdraw:", await dots.withdraw(result.mid))


if __name__ == "__main__":
    asyncio.run(protect_me(sys.argv[1], sys.argv[2]))
