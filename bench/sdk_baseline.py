"""The baseline a user would write: the official SDK's streaming helper under a semaphore.

The pattern is the SDK's own (https://github.com/anthropics/anthropic-sdk-python, README
"Streaming helpers"): `AsyncAnthropic().messages.stream(...)`, `text_stream`, then
`get_final_message().usage`. Rows are read lazily and a task is started only once the
semaphore has room, so memory does not grow with the input. Prints one JSON line of totals.

Usage: python bench/sdk_baseline.py INPUT.jsonl BASE_URL MODEL CONCURRENCY MAX_TOKENS
"""

from __future__ import annotations

import asyncio
import json
import sys

from anthropic import AsyncAnthropic


async def main(path: str, base_url: str, model: str, concurrency: int, max_tokens: int) -> None:
    """Send every row of `path` and print what came back, summed."""
    client = AsyncAnthropic(base_url=base_url, max_retries=8)
    semaphore = asyncio.Semaphore(concurrency)
    totals = {"ok": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0, "text_chars": 0}

    async def one(prompt: str) -> None:
        try:
            async with client.messages.stream(
                model=model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}],
            ) as stream:
                text = [chunk async for chunk in stream.text_stream]
                message = await stream.get_final_message()
            totals["ok"] += 1
            totals["input_tokens"] += message.usage.input_tokens
            totals["output_tokens"] += message.usage.output_tokens
            totals["text_chars"] += sum(map(len, text))
        except Exception:  # the baseline counts failures; the harness checks none happened
            totals["errors"] += 1
        finally:
            semaphore.release()

    tasks: set[asyncio.Task[None]] = set()
    with open(path, encoding="utf-8") as rows:
        for line in rows:
            await semaphore.acquire()
            task = asyncio.create_task(one(json.loads(line)["prompt"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*tasks)
    await client.close()
    print(json.dumps(totals))


if __name__ == "__main__":
    path, base_url, model, concurrency, max_tokens = sys.argv[1:6]
    asyncio.run(main(path, base_url, model, int(concurrency), int(max_tokens)))
