"""An OpenAI-compatible server that answers at once, for `benchmarks.scale`: the pipeline's own cost is
what the benchmark then measures, not a model's.

    python -m benchmarks.instant_server [--port 0]       prints `listening http://127.0.0.1:PORT/v1`

One asyncio process, HTTP/1.1 with keep-alive, no framework. Every answer is a function of the request
body alone (so a rerun writes the same tables), with a `usage` field (tokens ≈ 4/3 × words, the ratio
of English text under a BPE tokenizer):

- `POST /v1/completions` (a raw few-shot prompt ending in `Problem:`, the `fewshot` problem format):
  one math word problem of 25–45 words on one line, built from the hash of (prompt, seed): a person,
  an item, a place and four numbers in one of `TEMPLATES`, so problems are distinct and no two share
  most of their 3-word shingles (they pass the near-duplicate rule), ending in a question.
- `POST /v1/chat/completions` (a solution request): 70–110 words of step-by-step reasoning over the
  problem's numbers that ends in `\\boxed{answer}`. The answer is a function of the problem for three
  of four seeds, and of (problem, seed) for the fourth, so a problem's 4 solutions mostly agree and
  the majority vote keeps about 3.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re

NAMES = ("Maria", "Omar", "Lena", "Tariq", "Sofia", "Kenji", "Amara", "Diego", "Priya", "Jonas", "Fatima", "Liam",
         "Chen", "Ngozi", "Mateo", "Ingrid", "Ravi", "Yusuf", "Elena", "Kwame", "Hana", "Pablo", "Aisha", "Viktor",
         "Mei", "Samir", "Clara", "Tomas", "Zainab", "Felix")
ITEMS = ("apples", "pencils", "marbles", "books", "stickers", "oranges", "cookies", "tickets", "stamps", "shells",
         "cupcakes", "bottles", "seeds", "cards", "beads", "candles", "notebooks", "plates", "flowers", "buttons",
         "eggs", "bricks", "coins", "kites", "boxes", "ribbons", "lemons", "puzzles", "crayons", "bananas")
PLACES = ("market", "school fair", "bakery", "library", "garden", "harbor", "museum shop", "farm stand", "toy store",
          "bookshop", "station kiosk", "village hall", "craft fair", "corner shop", "sports club")
TEMPLATES = (
    "{name} has {a} {item} and buys {b} more at the {place}. On the way home {name} gives {c} {item} to a friend "
    "and then finds {d} more under the bench. How many {item} does {name} have now?",
    "At the {place}, {name} packs {item} into bags of {a}. There are {b} full bags and {c} loose {item}, and "
    "later {d} {item} are sold. How many {item} are left at the {place}?",
    "{name} earns {a} dollars a day selling {item} at the {place} for {b} days, then spends {c} dollars on "
    "supplies and {d} dollars on lunch. How much money does {name} keep?",
    "A shelf at the {place} holds {a} rows of {item} with {b} in each row. {name} removes {c} {item} in the "
    "morning and adds {d} in the evening. How many {item} are on the shelf?",
    "{name} walks {a} blocks to the {place}, then {b} blocks to a park, and back home along a path of {c} "
    "blocks. A friend walks {d} blocks less in all. How many blocks does the friend walk?",
    "The {place} orders {a} crates of {item} with {b} {item} in each crate. {c} {item} arrive broken and "
    "{name} sells {d} of the rest. How many {item} remain to be sold?",
    "{name} saves {a} {item} each week for {b} weeks. Then {name} trades {c} of them for a game and gets {d} "
    "as a gift from the {place}. How many {item} does {name} own after that?",
    "Tickets to the {place} cost {a} dollars for adults and {b} dollars for children. {name} buys {c} adult "
    "and {d} child tickets. What is the total cost of the tickets?",
)
STEPS = (
    "First, look at the quantities given in the problem: {a}, {b}, {c} and {d}.",
    "We combine the first two numbers: {a} and {b} together give {ab}.",
    "Next we take away {c}, because those are no longer counted, which leaves {abc}.",
    "Then we add the {d} that come back at the end, so the running total becomes {abcd}.",
    "Checking the arithmetic once more, {ab} minus {c} is {abc}, and {abc} plus {d} is {abcd}.",
    "Every step uses only whole numbers, so no rounding is needed anywhere in this solution.",
    "So the quantity asked for in the question is the final value of the running total.",
)


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest(), "big")


def words_to_tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 4 / 3))


def problem_text(prompt: str, seed: object) -> str:
    """A math word problem chosen by the hash of (prompt, seed)."""
    x = _hash(prompt, seed)
    template = TEMPLATES[x % len(TEMPLATES)]
    numbers = [2 + (x >> shift) % 97 for shift in (8, 16, 24, 32)]
    return template.format(name=NAMES[(x >> 40) % len(NAMES)], item=ITEMS[(x >> 45) % len(ITEMS)],
                           place=PLACES[(x >> 50) % len(PLACES)], a=numbers[0], b=numbers[1], c=numbers[2],
                           d=numbers[3])


def solution_text(problem: str, seed: object) -> str:
    """Step-by-step reasoning over the numbers of `problem`, ending in `\\boxed{answer}`; the answer is
    the problem's own for 3 of 4 seeds."""
    numbers = [int(n) for n in re.findall(r"\d+", problem)[:4]] + [3, 5, 7, 11]
    a, b, c, d = numbers[:4]
    x = _hash(problem, seed)
    steps = [step.format(a=a, b=b, c=c, d=d, ab=a + b, abc=a + b - c, abcd=a + b - c + d)
             for i, step in enumerate(STEPS) if i == 0 or (x >> i) % 5]
    answer = _hash(problem) % 500 if x % 4 else x % 500
    return " ".join(steps) + f" The answer is therefore \\boxed{{{answer}}}"


def answer(path: str, body: dict) -> dict:
    """The JSON response to one request."""
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        text = " " + problem_text(body["prompt"], body.get("seed")) + "\n"
        prompt_tokens = words_to_tokens(body["prompt"])
        choice = {"index": 0, "finish_reason": "stop", "text": text}
        kind = "text_completion"
    else:
        question = body["messages"][-1]["content"].rsplit("\n\n", 1)[-1]
        text = solution_text(question, body.get("seed"))
        prompt_tokens = sum(words_to_tokens(m["content"]) for m in body["messages"])
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        kind = "chat.completion"
    completion = words_to_tokens(text)
    return {"object": kind, "model": body.get("model", "instant"), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Requests of one keep-alive connection, answered in order."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                           if line.lower().startswith("content-length:")), 0)
            body = json.loads(await reader.readexactly(length)) if length else {}
            data = json.dumps(answer(path, body)).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(data)).encode() + b"\r\n\r\n" + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"listening http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
