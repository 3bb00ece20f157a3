"""A math agent written with the OpenAI SDK alone: no AgentScope, no reinflow import.

Train it through the OpenAI-compatible endpoint (docs/ENDPOINT.md)::

    rollout:
      workflow_command: [".venv/bin/python", "agents/openai_sdk_agent.py"]
      workflow_options: {max_steps: 4}

reinflow starts this script once per episode, from the project root, with the task as JSON on
stdin and ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` pointing at the episode's own base URL. The
agent loops: ask the model, run the ``calculate`` tool calls it makes, send the results back,
until the model answers in plain text or ``max_steps`` calls are spent (or the endpoint says the
episode's budget is spent: a 400 the SDK raises as ``BadRequestError``). Its last stdout line is
the result: ``{"final_answer": ..., "metadata": {...}}``. Any interpreter and venv with the
``openai`` package runs it; nothing here depends on the trainer's.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import sys

from openai import BadRequestError, OpenAI

SYSTEM_PROMPT = (
    "You are a math assistant. Use the calculate tool for arithmetic. "
    "When you know the answer, reply with the final number only."
)
TOOLS = [{
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression with + - * / ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (45 - 3) * 2"}},
            "required": ["expression"],
        },
    },
}]
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, or an error message for the model.

    >>> calculate("(45 - 3) * 2"), calculate("2 ** 10"), calculate("import os")
    ('84', '1024', 'error: not an arithmetic expression: import os')
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return f"error: not an arithmetic expression: {expression}"
    try:
        value = _evaluate(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError) as error:
        return f"error: {error}"
    return str(int(value)) if float(value).is_integer() else str(value)


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"unsupported expression: {ast.dump(node)[:60]}")


def run_tool_call(call) -> str:
    """The result of one tool call of the model (arguments that do not parse are an error too)."""
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        return "error: the arguments are not JSON"
    if call.function.name != "calculate" or not isinstance(arguments.get("expression"), str):
        return "error: call calculate with {\"expression\": \"...\"}"
    return calculate(arguments["expression"])


def solve(client: OpenAI, question: str, max_steps: int) -> tuple[str | None, dict]:
    """Ask, run tools, repeat; ``(final text, what happened)``."""
    messages: list = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    stats = {"llm_calls": 0, "tool_calls": 0, "ended_by": "max_steps"}
    for _ in range(max_steps):
        try:
            reply = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        except BadRequestError as error:  # the episode's turn/token/context budget is spent
            stats["ended_by"] = f"budget: {error.code}"
            return None, stats
        stats["llm_calls"] += 1
        message = reply.choices[0].message
        messages.append(message)  # the SDK's own message object goes back as it came
        if not message.tool_calls:
            stats["ended_by"] = "answer"
            return message.content, stats
        for call in message.tool_calls:
            stats["tool_calls"] += 1
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tool_call(call)})
    return None, stats


def main() -> None:
    task = json.load(sys.stdin)
    options = task.get("options") or {}
    client = OpenAI(max_retries=0)  # OPENAI_BASE_URL and OPENAI_API_KEY come from the environment
    text, stats = solve(client, task["question"], int(options.get("max_steps", 4)))
    numbers = NUMBER.findall(text or "")
    print(json.dumps({"final_answer": numbers[-1] if numbers else text, "metadata": stats}))


if __name__ == "__main__":
    main()
