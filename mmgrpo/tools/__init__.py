"""Tools for multi-turn rollouts: definitions and calls (base), built-ins, user and MCP tools (registry)."""
