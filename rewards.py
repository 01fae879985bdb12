"""GSM8K answer extraction and the reward functions for GRPO.

Reward functions follow TRL's convention ``fn(completions, **kwargs) -> list[float]``. TRL passes
every dataset column as a keyword argument, so ``correctness_reward`` reads the real answer from
the ``ground_truth`` column instead of guessing it.

Bad input (``None``, non-string content, a 1 MB completion, pathological repetitions) scores 0.0
for that item and never raises. Every regex runs in linear time on a bounded window or line, and
every scan of a long text is a C-level ``str.find`` or ``str.rfind``, so any 1 MB completion
scores in a few milliseconds and one runaway completion cannot stall a training step. Standard
library only: importing this module is cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from functools import lru_cache, partial
from itertools import islice

# Longest number (digits and decimal point) we take seriously: longer ones are junk, and converting
# a 10,000-digit string would be slow (Python refuses int() beyond 4,300 digits anyway).
_MAX_DIGITS = 40
_MAX_NUMBER_CHARS = 64  # a spelled number ("-$1,234,567.89") fits in this many characters
_MAX_ANSWER_CHARS = 100  # answers_match / parse_ground_truth ignore longer strings
_WINDOW = 200  # characters read after "####", "\boxed{" or "answer"; the longest final line matched
_MAX_PHRASES = 8  # mentions of "answer" examined, newest first
_SATURATION = 2  # distinct equations needed for the full reasoning reward (GSM8K's median is 3)
_MAX_EQUATIONS = 64  # "=" signs examined per completion

# One number spelling: 1,234.50  1234  18.  .5  optionally signed (ASCII or U+2212 minus), with
# "$", a "/denominator" and a trailing "%". Alternatives never overlap, so matching is linear.
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?|\.\d+"
_NUMBER = rf"(?P<neg>[-−])?\$?(?P<value>{_DIGITS})(?:/(?P<den>\d+))?(?P<pct>%)?"
# In running text a number does not continue a word or a decimal ("x2", "2.5"), and a minus right
# after a word, digit or ")" is a binary minus ("16-3"), not a sign.
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.)])" + _NUMBER)
_NUMBER_CHARS = frozenset("0123456789.,/%$-−")
# A whole string that is one number, optionally followed by a unit: "18 dollars", "$18", "50%".
_STANDALONE = re.compile(rf"\s*{_NUMBER}\s*(?:[^\W\d_][^\d]*)?")
# The line the prompt asks for: "#### <number>", a number in any spelling above but no words.
_FINAL_LINE = re.compile(rf"[ \t]*####[ \t]*{_NUMBER}[ \t]*")
# "the answer is N", "Answer: N", "**Answer:** $N": the number follows at once (maybe after markup).
# Not "answers", "answered", nor "this answer, and 6 * 7 ...".
_ANSWER_PHRASE = re.compile(
    r"(?<!\w)answer\b(?:\s+(?:is|was|would be|will be|equals))?[ \t:=*_$({\[]{0,10}", re.IGNORECASE
)
# The spellings of "answer" looked for: finding these three in a megabyte takes 1-4 ms, while lowering
# a megabyte of non-ASCII text to find any spelling takes 30 ms (twice that after a think block).
_ANSWER_WORDS = ("answer", "Answer", "ANSWER")

# LaTeX that models wrap around numbers and arithmetic, rewritten to plain text.
_LATEX = (
    (re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\(?:times|cdot)(?![a-zA-Z])"), "×"),
    (re.compile(r"\\div(?![a-zA-Z])"), "÷"),
    (re.compile(r"\\([$%])"), r"\1"),
    (re.compile(r"\\[,;:! ]|\\left|\\right"), ""),
    (re.compile(r"\{,\}"), ","),
)
_BRACES = re.compile(r"[{}]")
_DELETE_BRACKETS = str.maketrans("", "", "{}()")

# An equation: arithmetic, "=", and a number, maybe followed by more arithmetic ("= 16 + 20 + 48
# = 84"). Only a window on each side of "=" is read, with its LaTeX rewritten, so a huge text costs
# no more than a normal one. The arithmetic before "=" is the run of arithmetic characters ending
# there, at most 200 long; the lookbehind lets the search try each run once, so it is linear.
_EXPR_CHARS = r"0-9+\-−*/×÷·xX().,$% \t"
_EXPR_BEFORE = re.compile(rf"(?<![{_EXPR_CHARS}])[{_EXPR_CHARS}]{{1,200}}\Z")
_RESULT_AFTER = re.compile(rf"[ \t]*(?P<rhs>{_NUMBER})(?P<more>[{_EXPR_CHARS}]{{0,200}})")
_EQUATION_WINDOW = 400  # characters read on each side of "=" (rewriting LaTeX shortens them)
_EXPR_TOKEN = re.compile(rf"\s*(?:\$?({_DIGITS})(%?)|([-−+*/×÷·xX()]))")
# A stretch of arithmetic is parsed from its "kinds", one character per token: "n" for a number,
# an operator "+-*/()", or "w" for an operator whose left operand was a word ("eggs - 3").
_KINDS = {"-": "-", "−": "-", "+": "+", "*": "*", "×": "*", "·": "*", "x": "*", "X": "*",
          "/": "/", "÷": "/", "(": "(", ")": ")"}
_OPERATION = re.compile(r"[n)][-+*/]")  # a binary operator after an operand
_MAX_PARENS = 10  # bounds the parser's recursion


# ---------------------------------------------------------------------------------------------
# Numbers


@lru_cache(maxsize=1 << 16)
def _value(neg: str | None, value: str, den: str | None) -> Fraction | None:
    """Exact value of a matched number spelling; None when too long or divided by zero."""
    digits = value.replace(",", "")
    if len(digits) > _MAX_DIGITS or (den is not None and (len(den) > _MAX_DIGITS or int(den) == 0)):
        return None
    number = Fraction(digits) if den is None else Fraction(digits) / int(den)
    return -number if neg else number


def _match_value(match: re.Match) -> Fraction | None:
    return _value(match["neg"], match["value"], match["den"])


@lru_cache(maxsize=1 << 16)
def _canonical(number: Fraction) -> str:
    """Shortest exact spelling: "1234", "-0.5", or "1/3" when no short finite decimal exists."""
    den, twos, fives = number.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    places = max(twos, fives)
    if den != 1 or places > _MAX_DIGITS:
        return f"{number.numerator}/{number.denominator}"
    if places == 0:
        return str(number.numerator)
    whole, frac = divmod(abs(number.numerator) * (10**places // number.denominator), 10**places)
    sign = "-" if number < 0 else ""
    return f"{sign}{whole}.{frac:0{places}d}"  # no trailing zero: places is minimal


@lru_cache(maxsize=1 << 16)
def _parse_short(text: str) -> Fraction | None:
    match = _STANDALONE.fullmatch(text)
    return None if match is None else _match_value(match)


def _parse(text: object) -> Fraction | None:
    """Exact value of a string that is one number (plus an optional unit), else None."""
    if not isinstance(text, str) or len(text) > _MAX_ANSWER_CHARS:
        return None
    return _parse_short(text)


def _normalise(text: str) -> str | None:
    number = _parse(text)
    return None if number is None else _canonical(number)


def answers_match(predicted: str | None, gold: str) -> bool:
    """Whether two answers are the same number, exactly.

    Spellings differ freely (``18`` = ``18.00`` = ``18.`` = ``$18`` = ``18 dollars``, ``-5`` =
    ``−5``, ``1,000,000`` = ``1000000``, ``1/2`` = ``0.5``, ``50%`` = ``50``) but values do not:
    ``25`` != ``2.5``, and the sign counts. Values are compared as exact fractions; nothing a model
    wrote is ever evaluated.
    """
    number = _parse(predicted)
    return number is not None and number == _parse(gold)


def parse_ground_truth(gsm8k_answer: str) -> str:
    """The normalised final answer of a GSM8K reference solution (the text after its last "####").

    ``"... #### 1,234"`` gives ``"1234"``. A string without "####" is read as the answer itself,
    so already-parsed answers pass through unchanged. "" when there is no number.
    """
    if not isinstance(gsm8k_answer, str):
        return ""
    marker = gsm8k_answer.rfind("####")
    tail = gsm8k_answer if marker == -1 else gsm8k_answer[marker + 4 :]
    return _normalise(tail.strip()) or ""


# ---------------------------------------------------------------------------------------------
# Finding the stated answer


def _delatex(text: str) -> str:
    if "\\" not in text:
        return text
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    return text


def _answer_of(match: re.Match | None) -> str | None:
    """The normalised answer a matched number spells; None without a usable number."""
    number = None if match is None else _match_value(match)
    return None if number is None else _canonical(number)


def _answer_in_window(match: re.Match | None) -> str | None:
    """The answer a number matched within a window spells; None when the number runs on past the
    window's end, so that only part of it was read."""
    if match is None:
        return None
    text, end = match.string, match.endpos
    if match.end() == end < len(text) and text[end] in _NUMBER_CHARS:
        return None
    return _answer_of(match)


def _number_on_line(text: str, start: int) -> str | None:
    """The first number on the line from ``start``, read within a short window."""
    end = min(len(text), start + _WINDOW)
    newline = text.find("\n", start, end)
    return _answer_in_window(_NUMBER_IN_TEXT.search(text, start, end if newline == -1 else newline))


def _after_hash_marker(text: str) -> str | None:
    marker = text.rfind("####")
    return None if marker == -1 else _number_on_line(text, marker + 4)


def _in_last_box(text: str) -> str | None:
    """The number in the last ``\\boxed{...}``; nested braces (``\\frac{1}{2}``) are balanced."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    start += len("\\boxed{")
    depth = 1
    for brace in _BRACES.finditer(text, start, start + _WINDOW):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            content = _delatex(text[start : brace.start()])
            return _normalise(content.translate(_DELETE_BRACKETS))
    return None


def _answer_mentions(text: str) -> Iterator[int]:
    """Where "answer", "Answer" or "ANSWER" starts, last first. Each spelling's search resumes
    where it last stopped, so the whole text is scanned about three times."""
    found = {word: text.rfind(word) for word in _ANSWER_WORDS}
    while (mention := max(found.values())) != -1:
        yield mention
        word = text[mention : mention + len("answer")]
        found[word] = text.rfind(word, 0, mention)


def _after_answer_phrase(text: str) -> str | None:
    """The number of the last "the answer is N" / "Answer: N" / "ANSWER: N" among the last 8
    mentions of the word (a bounded loop, so "answer" repeated 100,000 times costs nothing)."""
    for mention in islice(_answer_mentions(text), _MAX_PHRASES):
        # A window bounds both regexes: a megabyte of spaces after "answer" cost the phrase's "\s+"
        # 100 ms or more of backtracking, a megabyte of digits cost the number's "\d+" 30 ms.
        end = mention + _WINDOW
        phrase = _ANSWER_PHRASE.match(text, mention, end)
        answer = phrase and _answer_in_window(_NUMBER_IN_TEXT.match(text, phrase.end(), end))
        if answer:
            return answer
    return None


def _last_number(text: str) -> str | None:
    """The last number in the text, found from its last digit so a huge text costs no more."""
    end = max(map(text.rfind, "0123456789")) + 1
    if end == 0:
        return None
    start = end - 1
    while start > 0 and text[start - 1] in _NUMBER_CHARS and end - start <= _MAX_NUMBER_CHARS:
        start -= 1
    if end - start > _MAX_NUMBER_CHARS:
        return None  # "1,1,1,...", a 10,000-digit number: no sensible last number
    last = None
    for last in _NUMBER_IN_TEXT.finditer(text, start, end):
        pass
    return _answer_of(last) if last is not None and last.end() == end else None


# The forms in which a completion states its final answer in so many words, in the order they are looked for.
_STATEMENTS = (_after_hash_marker, _in_last_box, _after_answer_phrase)


def _first_answer(text: str, finders: tuple) -> str | None:
    for finder in finders:
        answer = finder(text)
        if answer is not None:
            return answer
    return None


def _answer(text: object, finders: tuple) -> str | None:
    """The first answer the finders read, in the text after a ``</think>`` first, then in all of it."""
    if not isinstance(text, str):
        return None
    think_end = text.rfind("</think>")
    if think_end != -1:
        answer = _first_answer(text[think_end + len("</think>") :], finders)
        if answer is not None:
            return answer
    return _first_answer(text, finders)


def stated_answer(text: str) -> str | None:
    """The normalised final answer a completion states in so many words, or None.

    The forms, in this order: the last "####" marker (the number on its line); the last
    ``\\boxed{...}``; the last "answer is N" / "Answer: N" phrase. Each takes the last statement,
    so a corrected answer wins. When the completion has a ``<think>...</think>`` block, the text
    after the block is read first and the whole text only if that states nothing. A number that
    merely comes last is no statement: see ``extract_answer``.
    """
    return _answer(text, _STATEMENTS)


def extract_answer(text: str) -> str | None:
    """The normalised final answer a completion gives, or None when it gives none: its
    ``stated_answer``, else the last number in the text.

    The fallback is for grading: a model that ends "... so she has 18 eggs left." is right, and
    counting it wrong would understate its accuracy. It is no evidence that the completion states
    an answer, which is why ``answer_present_reward`` reads ``stated_answer`` instead.
    """
    return _answer(text, (*_STATEMENTS, _last_number))


def is_formatted(text: str) -> bool:
    """Whether the text states its final answer once, as the training prompt asks: the last
    non-empty line is ``#### <number>`` and no "####" comes before it.

    Surrounding spaces are fine, and so is any number spelling ``answers_match`` accepts
    (``#### -5``, ``#### $1,234``, ``#### 2.5``, ``#### 1/2``); words are not
    (``#### 42 apples``, ``#### **42**``), because the prompt asks for a bare number. A repeated
    or stacked answer line (``#### 7\\n#### 7``, ``#### 5\\n#### 7``) is not the format: a policy
    that repeats its answer line until the token budget runs out must not be paid for it, and
    GSM8K's reference solutions state "####" exactly once.
    """
    if not isinstance(text, str):
        return False
    body = text.rstrip()
    line_start = max(body.rfind("\n"), body.rfind("\r")) + 1
    if len(body) - line_start > _WINDOW:
        return False  # too long for "#### <number>"; the regex would backtrack over all of it
    if body.find("####") < line_start:
        return False  # no marker at all, or one before the last line
    match = _FINAL_LINE.fullmatch(body, line_start)
    return match is not None and _match_value(match) is not None


# ---------------------------------------------------------------------------------------------
# Checking shown arithmetic


def _token(match: re.Match) -> tuple[str, Fraction | None]:
    """The kind and number of an ``_EXPR_TOKEN`` match; kind "" for an unusable number."""
    digits, percent, operator = match.groups()
    if operator:
        return _KINDS[operator], None
    number = _value(None, digits, "100" if percent else None)  # in arithmetic "20%" is 0.2
    return ("", None) if number is None else ("n", number)


def _segments(expr: str) -> list[tuple[str, list[Fraction]]]:
    """``expr`` as (kinds, numbers) pairs, one per stretch of arithmetic.

    A new stretch starts after a stray character ("2, 3 + 4") or an unusable number, and between
    two adjacent operands ("Step 1. 3 + 4"); a bracket glued to an operand multiplies
    ("2(50+100)"). An operator that starts a stretch, other than "(" and a minus glued to its
    operand, had a word as its left operand ("eggs - 3") and becomes "w".
    """
    segments: list[tuple[list[str], list[Fraction]]] = [([], [])]
    expr = expr.strip()
    position = 0
    while position < len(expr):
        match = _EXPR_TOKEN.match(expr, position)
        kind, number = ("", None) if match is None else _token(match)
        if not kind:
            segments.append(([], []))
            position = position + 1 if match is None else match.end()
            continue
        kinds, numbers = segments[-1]
        if kind in "n(" and kinds and kinds[-1] in "n)":
            if kind == "(" and match.start(3) == position:  # glued, no space between
                kinds.append("*")
            else:
                kinds, numbers = [], []
                segments.append((kinds, numbers))
        glued = not expr[match.end() : match.end() + 1].isspace()
        if not kinds and kind not in "n(" and not (kind == "-" and glued):
            kind = "w"
        kinds.append(kind)
        if number is not None:
            numbers.append(number)
        position = match.end()
    return [("".join(kinds), numbers) for kinds, numbers in segments]


# A recursive-descent parser over the kinds string; ``numbers`` yields the numbers in order.


def _sum(kinds: str, numbers: Iterator[Fraction], i: int) -> tuple[Fraction | None, int]:
    value, i = _product(kinds, numbers, i)
    while value is not None and i < len(kinds) and kinds[i] in "+-":
        operand, next_i = _product(kinds, numbers, i + 1)
        if operand is None:
            return None, next_i
        value = value + operand if kinds[i] == "+" else value - operand
        i = next_i
    return value, i


def _product(kinds: str, numbers: Iterator[Fraction], i: int) -> tuple[Fraction | None, int]:
    value, i = _factor(kinds, numbers, i)
    while value is not None and i < len(kinds) and kinds[i] in "*/":
        operand, next_i = _factor(kinds, numbers, i + 1)
        if operand is None or (kinds[i] == "/" and operand == 0):
            return None, next_i
        value = value * operand if kinds[i] == "*" else value / operand
        i = next_i
    return value, i


def _factor(kinds: str, numbers: Iterator[Fraction], i: int) -> tuple[Fraction | None, int]:
    negate = False
    while i < len(kinds) and kinds[i] == "-":
        negate, i = not negate, i + 1
    if i < len(kinds) and kinds[i] == "n":
        value, i = next(numbers), i + 1
    elif i < len(kinds) and kinds[i] == "(":
        value, i = _sum(kinds, numbers, i + 1)
        if value is None or i >= len(kinds) or kinds[i] != ")":
            return None, i
        i += 1
    else:
        return None, i
    return (-value if negate else value), i


def _evaluate(kinds: str, numbers: list[Fraction]) -> Fraction | None:
    """Exact value of a stretch of arithmetic (+ - * / and parentheses), or None.

    None also when it is a bare number ("= 5" states no work), when it begins with a binary
    operator (its left operand was a word: "eggs - 3 = 9"), or when it is not arithmetic.
    """
    while kinds.startswith("(") and kinds.count("(") > kinds.count(")"):
        kinds = kinds[1:]  # "(3 + 4 = 7)": the bracket closes after the equation
    if not kinds or kinds[0] not in "n(-" or kinds.count("(") > _MAX_PARENS:
        return None
    if not _OPERATION.search(kinds):
        return None
    value, end = _sum(kinds, iter(numbers), 0)
    return value if end == len(kinds) else None


def _equations(text: str) -> Iterator[tuple[str, re.Match]]:
    """(arithmetic before, result after) around each of the first 64 "=" signs that has both.

    Reading "=" by "=" means a chain "3 × 4 = 12 + 2 = 14" yields both of its equations.
    """
    at = -1
    for _ in range(_MAX_EQUATIONS):
        at = text.find("=", at + 1)
        if at == -1:
            return
        before = _EXPR_BEFORE.search(_delatex(text[max(0, at - _EQUATION_WINDOW) : at]))
        after = _RESULT_AFTER.match(_delatex(text[at + 1 : at + 1 + _EQUATION_WINDOW]))
        if before and after:
            yield before.group(), after


def _equation_holds(lhs: Fraction, result: re.Match) -> bool:
    """Whether ``lhs`` equals what follows "=": the number, exactly or rounded to the places it
    shows (10/3 = 3.33), or the whole arithmetic there ("= 16 + 20 + 48 = 84")."""
    if _evaluate(*_segments(result["rhs"] + result["more"])[0]) == lhs:
        return True
    stated = _match_value(result)
    if stated is None:
        return False
    unit = Fraction(1, 100) if result["pct"] else Fraction(1)
    places = len(result["value"].partition(".")[2])
    error = abs(lhs - stated * unit)
    return error == 0 or (places > 0 and error < unit / 10**places)


def _reasoning_score(text: str) -> float:
    """Share of the stated equations that are true, times min(count, 2) / 2.

    An equation is arithmetic on numbers, "=", and a number: "16 - 3 - 4 = 9", GSM8K's calculator
    notes "<<16-3-4=9>>", "$12 × 3 = $36", chains "3 × 4 = 12 + 2 = 14". Repeats count once;
    only the first 64 "=" signs are examined. Text without equations, and stray "-" or "=", score
    0.0; one true equation scores 0.5, two or more all true score 1.0, false ones pull it down.
    """
    seen: dict[str, bool] = {}
    for expr, result in _equations(text):
        key = "".join(expr.split()) + "=" + result["rhs"]
        lhs = None if key in seen else _evaluate(*_segments(expr)[-1])
        if lhs is not None:
            seen[key] = _equation_holds(lhs, result)
    if not seen:
        return 0.0
    return sum(seen.values()) / len(seen) * min(len(seen), _SATURATION) / _SATURATION


# ---------------------------------------------------------------------------------------------
# Reward functions (TRL's calling convention)


def completion_text(completion: object) -> str:
    """The text of one completion: a plain string, or the content of the last assistant message
    of a conversational completion (``[{"role": "assistant", "content": ...}]``); "" otherwise."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role") == "assistant":
                content = message.get("content")
                return content if isinstance(content, str) else ""
    return ""


def _per_completion(column: object, count: int) -> list:
    """A per-completion keyword argument as a list of ``count`` items, None where one is missing."""
    items = list(column) if isinstance(column, (list, tuple)) else []
    return items[:count] + [None] * (count - len(items))


def _cut_at_limit(completion_ids: object, stop_token_ids: frozenset, count: int) -> list[bool]:
    """Per completion, whether it was cut at max_completion_length: its token ids end in none of the
    stop-token ids (an EOS or the pad token), TRL's own test for ``completions/clipped_ratio``.

    ``completion_ids`` is what TRL passes every reward function, one list of ids per completion.
    Without stop-token ids, or without a completion's ids, nothing can be told: not cut.
    """
    if not stop_token_ids:
        return [False] * count
    ids = _per_completion(completion_ids, count)
    return [isinstance(i, (list, tuple)) and (not i or i[-1] not in stop_token_ids) for i in ids]


def format_reward(
    completions: list, completion_ids: list | None = None, stop_token_ids: frozenset = frozenset(), **kwargs
) -> list[float]:
    """1.0 when the completion states its final answer once, as its last line ``#### <number>``
    (see ``is_formatted``), and was not cut at max_completion_length (see ``_cut_at_limit``).

    TRL passes the ids but not the stop tokens: ``reward_functions`` binds them. Called without
    them, the text alone is scored.
    """
    cut = _cut_at_limit(completion_ids, stop_token_ids, len(completions))
    return [float(is_formatted(completion_text(c)) and not was_cut) for c, was_cut in zip(completions, cut)]


def reasoning_reward(completions: list, **kwargs) -> list[float]:
    """Rewards shown arithmetic that is true (see ``_reasoning_score``), in [0, 1]."""
    return [_reasoning_score(completion_text(c)) for c in completions]


def answer_present_reward(
    completions: list, completion_ids: list | None = None, stop_token_ids: frozenset = frozenset(), **kwargs
) -> list[float]:
    """1.0 when the completion states a final answer (see ``stated_answer``: "#### N", a last
    ``\\boxed{N}``, "the answer is N") and was not cut at max_completion_length.

    It is the step between writing something and writing ``#### N``, so it pays for a statement,
    not for a number that happens to come last: nearly every completion mentions a number, and a
    reward that every completion earns adds nothing to GRPO's advantages. A cut completion stopped
    before its answer, whatever it said so far. ``correctness_reward`` keeps the last-number
    fallback: an answer in plain prose can still be right.
    """
    cut = _cut_at_limit(completion_ids, stop_token_ids, len(completions))
    return [
        float(stated_answer(completion_text(c)) is not None and not was_cut) for c, was_cut in zip(completions, cut)
    ]


def correctness_reward(completions: list, ground_truth: list, **kwargs) -> list[float]:
    """1.0 when the answer equals the reference answer exactly (see ``answers_match``).

    The answer is ``extract_answer``'s, last-number fallback included, and a cut completion is
    scored on its text: this reward measures being right, the form rewards measure the form.

    ``ground_truth`` is the dataset column of the same name, holding either parsed answers
    ("72") or whole GSM8K solutions ("... #### 72"). A missing entry scores 0.0.
    """
    golds = _per_completion(ground_truth, len(completions))
    return [
        float(answers_match(extract_answer(completion_text(c)), parse_ground_truth(gold)))
        for c, gold in zip(completions, golds)
    ]


# The one ordered definition of the rewards and their default weights (they sum to 1, so the
# weighted total lies in [0, 1]). The trainer passes reward_funcs=reward_functions(...) and
# reward_weights=[w for _, w in REWARDS]; each __name__ shows in TensorBoard as rewards/<name>/mean.
REWARDS = (
    (format_reward, 0.2),
    (reasoning_reward, 0.2),
    (answer_present_reward, 0.2),
    (correctness_reward, 0.4),
)


def reward_functions(stop_token_ids) -> list:
    """REWARDS' functions as a trainer hands them to TRL, each bound to the ids a finished completion
    ends in, so that those that pay nothing for a cut completion tell it from ``completion_ids``.

    A ``functools.partial`` keeps the function's name in TRL's metrics (TRL 1.16's ``get_callable_name``
    unwraps it, trl/trainer/utils.py:236-244) and pickles like the function.
    """
    stops = frozenset(stop_token_ids)
    return [partial(function, stop_token_ids=stops) for function, _ in REWARDS]
