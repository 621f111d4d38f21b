"""The frontier simulator: an OpenAI-compatible stand-in for a frontier LLM that no machine here
can reach. It answers from a labelled data set with a set accuracy, latency and token use, errs the
way a real model does (deterministically, on confusable labels, more on hard inputs), and says it is
a simulator in every response, log line and report.
"""
