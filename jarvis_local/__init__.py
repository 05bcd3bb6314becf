"""Local harness of JARVIS Voice Engine: the loopback stack, the demo, simulated and browser
kiosks, the stand-in LLM and the tiny speech models. Tests, benches and ``make demo`` use it;
production code (agent/, token_service/, jarvis/) never imports it."""
