"""Integrations of budgetkit with the tools that sit around model calls.

Each integration is a module of its own with an extra of its own, imported only by those who use
it: importing ``budgetkit`` or this package imports none of them.

- ``budgetkit.integrations.litellm`` (extra ``litellm``): budgets enforced on every LiteLLM call,
  in the SDK (a ``CustomLogger`` callback and ``budgeted_acompletion``, which also charges a
  stream that is cut or cancelled) and in the LiteLLM proxy (pre-call reservation → HTTP 429,
  commit on success keyed by ``litellm_call_id``, release on failure). See the docs'
  Integrations page.
"""
