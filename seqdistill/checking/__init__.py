"""The answer-checking layer, bottom up: answers, code on the sandbox, reasoning-gym, verify, judge."""
