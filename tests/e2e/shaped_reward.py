"""A dense reward for mechanics tests on the random tiny model (whose task reward is always 0)."""


def score(prompt, response, ground_truth, **extra):
    return sum(ch.isdigit() for ch in response) / 8.0
