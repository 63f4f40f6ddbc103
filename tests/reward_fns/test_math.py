"""reward_fns/math.py: answer extraction and equivalence, table-driven.

Every expected score below is decided by hand from the rules documented in reward_fns/math.py
(box wins, last box wins, last "answer is" wins unless corrected right after, percent policy, ...).
"""
import threading
import time

import pytest

from reward_fns.math import compute_score, extract_answer, gold_answer, is_equivalent, last_boxed

# (id, response, ground_truth, expected score)
CASES = [
    # ---------------------------------------------------------------- \boxed{}
    ("box-int", "So we get \\boxed{42}.", "42", 1.0),
    ("box-int-wrong", "So we get \\boxed{41}.", "42", 0.0),
    ("box-nested-frac", "Thus \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("box-nested-deep", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", 1.0),
    ("box-in-dollars", "The final answer is $\\boxed{7}$.", "7", 1.0),
    ("box-spaces", "\\boxed{  13  }", "13", 1.0),
    ("box-no-brace", "so the answer is \\boxed 5", "5", 1.0),
    ("fbox", "\\fbox{12}", "12", 1.0),
    ("box-double-nested", "\\boxed{\\boxed{9}}", "9", 1.0),
    ("box-text-answer", "\\boxed{\\text{Monday}}", "Monday", 1.0),
    ("box-choice", "The correct option is \\boxed{(B)}", "B", 1.0),
    ("box-choice-wrong", "The correct option is \\boxed{(C)}", "B", 0.0),
    ("box-choice-text", "\\boxed{\\text{(D)}}", "D", 1.0),
    ("box-matrix", "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 1.0),
    ("box-matrix-wrong", "\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 0.0),
    ("box-factorial", "\\boxed{5!}", "120", 1.0),
    ("box-trailing-period", "\\boxed{8.}", "8", 1.0),
    # ---------------------------------------------------------------- GSM8K ####
    ("hash-int", "She has 40 + 2 apples.\n#### 42", "42", 1.0),
    ("hash-wrong", "She has 40 + 1 apples.\n#### 41", "42", 0.0),
    ("hash-thousands", "#### 1,000", "1000", 1.0),
    ("hash-dollars", "Total cost:\n#### $1,234.50", "1234.5", 1.0),
    ("hash-no-space", "####18", "18", 1.0),
    ("hash-then-text", "#### 72\nI hope this helps!", "72", 1.0),
    ("hash-unit", "#### 12 dollars", "12", 1.0),
    ("hash-negative", "#### -3", "-3", 1.0),
    ("hash-last-wins", "#### 5\nWait, recount.\n#### 6", "6", 1.0),
    ("hash-last-wins-neg", "#### 5\nWait, recount.\n#### 6", "5", 0.0),
    # ---------------------------------------------------------------- "the answer is"
    ("is-int", "The answer is 7.", "7", 1.0),
    ("is-since", "The answer is 7, since 3+4=7", "7", 1.0),
    ("is-since-wrong", "The answer is 8, since 3+4=7", "7", 0.0),
    ("is-because", "The answer is 12 because 3*4 = 12.", "12", 1.0),
    ("is-colon", "Answer: 15", "15", 1.0),
    ("is-md-bold", "**Answer:** 42", "42", 1.0),
    ("is-bold-value", "So the answer is **42**.", "42", 1.0),
    ("is-final", "Final answer: 3/4", "0.75", 1.0),
    ("is-minerva", "Final Answer: The final answer is $5$. I hope it is correct.", "5", 1.0),
    ("is-latex-inline", "The answer is $\\frac{3}{4}$.", "0.75", 1.0),
    ("is-latex-paren", "The answer is \\(\\frac{\\pi}{2}\\).", "\\frac{\\pi}{2}", 1.0),
    ("is-latex-bracket", "The answer is \\[\\sqrt{2}\\]", "\\sqrt{2}", 1.0),
    ("is-price", "The answer is $1,234.50.", "1234.5", 1.0),
    ("is-price-and-more", "The answer is $18, and Bob paid $20.", "18", 1.0),
    ("is-price-and-more-neg", "The answer is $18, and Bob paid $20.", "20", 0.0),
    ("is-equals", "answer = 64", "64", 1.0),
    ("is-would-be", "The answer would be 9.", "9", 1.0),
    ("is-decimal-end", "The answer is 7.5.", "7.5", 1.0),
    ("is-decimal-end-neg", "The answer is 7.5.", "7", 0.0),
    ("is-approx", "The answer is approximately 3.5.", "3.5", 1.0),
    ("is-newline", "The answer is 10\nbecause we counted.", "10", 1.0),
    ("is-semicolon", "The answer is 11; the rest follows.", "11", 1.0),
    ("is-last-stated-wins", "The answer is 5. Let me recheck. The answer is 6.", "6", 1.0),
    ("is-last-stated-wins-neg", "The answer is 5. Let me recheck. The answer is 6.", "5", 0.0),
    ("is-not", "The answer is not 5. It is 6", "6", 1.0),
    ("is-unit", "The answer is 5 cm.", "5", 1.0),
    ("is-unit-text", "The answer is $5$ dollars.", "5", 1.0),
    ("is-expression", "The answer is 2x+2", "2(x+1)", 1.0),
    ("is-expression-wrong", "The answer is 2x+1", "2(x+1)", 0.0),
    ("is-set", "answer: {1, 2, 3}", "\\{3,2,1\\}", 1.0),
    ("is-interval", "The answer is (1,2].", "(1,2]", 1.0),
    ("is-choice", "The correct answer is (B).", "B", 1.0),
    ("is-word", "The answer is yes.", "Yes", 1.0),
    ("is-word-wrong", "The answer is no.", "Yes", 0.0),
    ("is-million", "The answer is 2 million.", "2000000", 1.0),
    ("is-therefore", "The answer is therefore 27.", "27", 1.0),
    # ---------------------------------------------------------------- last number fallback
    ("last-number", "First 3, then 12", "12", 1.0),
    ("last-number-wrong", "First 12, then 3", "12", 0.0),
    ("last-number-neg", "The temperature fell to -5", "-5", 1.0),
    ("last-number-range", "between 3-5", "5", 1.0),
    ("last-number-thousands", "In total they raised 1,250", "1250", 1.0),
    ("last-number-decimal", "She pays 3.75", "3.75", 1.0),
    ("last-number-fraction", "1/2", "0.5", 1.0),
    ("last-number-sci", "about 1.5e3", "1500", 1.0),
    ("last-number-tiny-task", " 15", "15", 1.0),
    ("last-number-tiny-task-neg", " 51", "15", 0.0),
    ("last-number-trailing-period", "so it's 8.", "8", 1.0),
    # ---------------------------------------------------------------- numbers: forms
    ("num-thousands-box", "\\boxed{1,000}", "1000", 1.0),
    ("num-thousands-gold", "\\boxed{1000}", "1,000", 1.0),
    ("num-thousands-million", "\\boxed{1,000,000}", "1000000", 1.0),
    ("num-thousands-latex-brace", "\\boxed{1{,}000}", "1000", 1.0),
    ("num-thousands-latex-space", "\\boxed{1\\,000}", "1000", 1.0),
    ("num-thousands-neg", "\\boxed{1,001}", "1000", 0.0),
    ("num-dollar-box", "\\boxed{\\$1,234.50}", "1234.5", 1.0),
    ("num-dollar-gold", "\\boxed{1234.5}", "$1,234.50", 1.0),
    ("num-decimal-trailing-zero", "\\boxed{2.0}", "2", 1.0),
    ("num-decimal-vs-half", "\\boxed{0.50}", "1/2", 1.0),
    ("num-half-vs-decimal", "\\boxed{1/2}", "0.5", 1.0),
    ("num-frac-vs-decimal", "\\boxed{\\frac{1}{4}}", "0.25", 1.0),
    ("num-dfrac", "\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("num-tfrac", "\\boxed{\\tfrac{3}{4}}", "3/4", 1.0),
    ("num-frac-short", "\\boxed{\\frac34}", "0.75", 1.0),
    ("num-frac-wrong", "\\boxed{\\frac{3}{5}}", "0.75", 0.0),
    ("num-neg-frac", "\\boxed{-\\frac{1}{2}}", "-0.5", 1.0),
    ("num-neg-frac-inner", "\\boxed{\\frac{-1}{2}}", "-\\frac{1}{2}", 1.0),
    ("num-sign-matters", "\\boxed{-3}", "3", 0.0),
    ("num-sign-matters-2", "\\boxed{3}", "-3", 0.0),
    ("num-unicode-minus", "\\boxed{−4}", "-4", 1.0),
    ("num-sci-e", "\\boxed{1.5e3}", "1500", 1.0),
    ("num-sci-times", "\\boxed{1.5 \\times 10^{3}}", "1500", 1.0),
    ("num-sci-cdot", "\\boxed{2.5 \\cdot 10^{-2}}", "0.025", 1.0),
    ("num-sci-wrong", "\\boxed{1.5 \\times 10^{4}}", "1500", 0.0),
    ("num-sci-tiny-differ", "\\boxed{1e-7}", "2e-7", 0.0),
    ("num-repeating-6dp", "\\boxed{0.333333}", "1/3", 1.0),
    ("num-repeating-2dp", "\\boxed{0.33}", "1/3", 0.0),
    ("num-pi-approx", "\\boxed{3.14}", "\\pi", 0.0),
    ("num-leading-dot", "\\boxed{.5}", "0.5", 1.0),
    ("num-plus-sign", "\\boxed{+7}", "7", 1.0),
    ("num-big-int", "\\boxed{123456789012345678901234567890}", "123456789012345678901234567890", 1.0),
    ("num-big-int-off-by-one", "\\boxed{123456789012345678901234567891}", "123456789012345678901234567890", 0.0),
    ("num-int-vs-decimal-close", "\\boxed{1234567.0}", "1234568", 0.0),
    ("num-x-equals", "\\boxed{x = 5}", "5", 1.0),
    ("num-x-equals-gold", "\\boxed{5}", "x=5", 1.0),
    ("num-x-equals-wrong", "\\boxed{x = 6}", "5", 0.0),
    ("num-degrees", "\\boxed{30^\\circ}", "30", 1.0),
    ("num-degrees-gold", "\\boxed{30}", "30^{\\circ}", 1.0),
    # ---------------------------------------------------------------- percent policy
    ("pct-vs-number", "The answer is 50%.", "50", 1.0),
    ("pct-vs-fraction", "The answer is 50%.", "0.5", 1.0),
    ("pct-latex-vs-number", "\\boxed{50\\%}", "50", 1.0),
    ("pct-latex-vs-fraction", "\\boxed{50\\%}", "0.5", 1.0),
    ("pct-gold-vs-number", "\\boxed{50}", "50\\%", 1.0),
    ("pct-gold-vs-fraction", "\\boxed{0.5}", "50%", 1.0),
    ("pct-both", "\\boxed{12.5\\%}", "12.5%", 1.0),
    ("pct-word", "The answer is 25 percent.", "25", 1.0),
    ("pct-word-fraction", "The answer is 25 percent.", "0.25", 1.0),
    ("pct-wrong", "\\boxed{5\\%}", "50", 0.0),
    ("pct-bare-fraction-vs-number", "\\boxed{0.5}", "50", 0.0),
    ("pct-bare-number-vs-fraction", "\\boxed{50}", "0.5", 0.0),
    ("pct-inline-latex", "The answer is $50\\%$.", "50", 1.0),
    # ---------------------------------------------------------------- units and text stripped
    ("unit-cm-box", "\\boxed{5 \\text{ cm}}", "5", 1.0),
    ("unit-inches-box", "\\boxed{12\\text{ inches}}", "12", 1.0),
    ("unit-dollars", "\\boxed{12 dollars}", "12", 1.0),
    ("unit-dollars-wrong", "\\boxed{13 dollars}", "12", 0.0),
    ("unit-mbox", "\\boxed{7\\mbox{ apples}}", "7", 1.0),
    ("unit-attached", "\\boxed{10kg}", "10", 1.0),
    ("unit-squared", "\\boxed{25 \\text{ cm}^2}", "25", 1.0),
    ("unit-speed", "\\boxed{60 km/h}", "60", 1.0),
    ("unit-per", "The answer is 60 miles per hour.", "60", 1.0),
    ("unit-square-feet", "\\boxed{144 square feet}", "144", 1.0),
    ("unit-gold-has-unit", "\\boxed{5}", "5 \\text{ meters}", 1.0),
    ("unit-variable-not-unit", "\\boxed{5x}", "5", 0.0),
    ("unit-pi-not-unit", "\\boxed{5 pi}", "5", 0.0),
    ("unit-pi-latex", "\\boxed{5\\pi}", "5", 0.0),
    ("unit-degrees-word", "The answer is 90 degrees.", "90", 1.0),
    # ---------------------------------------------------------------- LaTeX wrapping
    ("wrap-dollars", "$\\boxed{6}$", "6", 1.0),
    ("wrap-display-dollars", "The answer is $$\\frac{7}{2}$$", "3.5", 1.0),
    ("wrap-gold-dollars", "\\boxed{6}", "$6$", 1.0),
    ("wrap-gold-paren", "\\boxed{\\frac12}", "\\(\\frac{1}{2}\\)", 1.0),
    ("wrap-gold-bracket", "\\boxed{\\frac12}", "\\[0.5\\]", 1.0),
    ("wrap-left-right", "\\boxed{\\left(1, 2\\right]}", "(1,2]", 1.0),
    ("wrap-displaystyle", "\\boxed{\\displaystyle\\frac{1}{3}}", "1/3", 1.0),
    # ---------------------------------------------------------------- symbolic (math-verify)
    ("sym-factor", "\\boxed{2(x+1)}", "2x+2", 1.0),
    ("sym-square", "\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("sym-square-wrong", "\\boxed{(x+1)^2}", "x^2+1", 0.0),
    ("sym-diff-squares", "\\boxed{(x-1)(x+1)}", "x^2-1", 1.0),
    ("sym-sqrt", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ("sym-sqrt-wrong", "\\boxed{2\\sqrt{3}}", "\\sqrt{8}", 0.0),
    ("sym-rationalise", "\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("sym-pi", "\\boxed{\\frac{\\pi}{3}}", "\\pi/3", 1.0),
    ("sym-pi-wrong", "\\boxed{\\frac{\\pi}{6}}", "\\pi/3", 0.0),
    ("sym-pi-decimal-close", "\\boxed{0.866025}", "\\frac{\\sqrt{3}}{2}", 1.0),
    ("sym-power", "\\boxed{2^{10}}", "1024", 1.0),
    ("sym-log", "\\boxed{\\log_2 8}", "3", 1.0),
    ("sym-equation-rhs", "\\boxed{y = 2x+3}", "2x+3", 1.0),
    ("sym-infinity", "\\boxed{\\infty}", "\\infty", 1.0),
    ("sym-complex", "\\boxed{3+4i}", "3+4i", 1.0),
    ("sym-complex-wrong", "\\boxed{3-4i}", "3+4i", 0.0),
    # ---------------------------------------------------------------- intervals, sets, tuples
    ("interval-same", "\\boxed{(1, 2]}", "(1,2]", 1.0),
    ("interval-open-closed", "\\boxed{[1, 2)}", "(1,2]", 0.0),
    ("interval-infinite", "\\boxed{(-\\infty, 3)}", "(-\\infty,3)", 1.0),
    ("interval-union", "\\boxed{(-\\infty,0) \\cup (1,\\infty)}", "(-\\infty, 0)\\cup(1, \\infty)", 1.0),
    ("interval-union-wrong", "\\boxed{(-\\infty,0] \\cup (1,\\infty)}", "(-\\infty, 0)\\cup(1, \\infty)", 0.0),
    ("interval-in", "\\boxed{x \\in [2, 5)}", "[2,5)", 1.0),
    ("set-order", "\\boxed{\\{3,2,1\\}}", "{1,2,3}", 1.0),
    ("set-order-latex-gold", "\\boxed{\\{1, 2, 3\\}}", "\\{3,2,1\\}", 1.0),
    ("set-missing-element", "\\boxed{\\{1,2\\}}", "\\{1,2,3\\}", 0.0),
    ("set-list", "\\boxed{1, 2, 3}", "3, 2, 1", 1.0),
    ("tuple-same", "\\boxed{(3, 4)}", "(3,4)", 1.0),
    ("tuple-swapped", "\\boxed{(4, 3)}", "(3,4)", 0.0),
    ("roots-pm", "\\boxed{\\pm 2}", "\\{-2, 2\\}", 1.0),
    # ---------------------------------------------------------------- tricky negatives
    ("neg-box-wins-over-text", "The answer is 6.\n\\boxed{5}", "6", 0.0),
    ("neg-box-wrong-text-right", "The sum is clearly 12, so \\boxed{13}", "12", 0.0),
    ("neg-box-right-text-wrong", "The sum is clearly 13, so \\boxed{12}", "12", 1.0),
    ("neg-two-boxes-last-wins", "\\boxed{5} hmm, no: \\boxed{6}", "5", 0.0),
    ("neg-two-boxes-last-right", "\\boxed{5} hmm, no: \\boxed{6}", "6", 1.0),
    ("neg-box-then-text-correction", "\\boxed{5}. Actually it's 6.", "6", 0.0),
    ("neg-actually", "The answer is 5... actually 6", "5", 0.0),
    ("neg-actually-right", "The answer is 5... actually 6", "6", 1.0),
    ("neg-wait-no", "The answer is 5. Wait, no, it's 6.", "5", 0.0),
    ("neg-wait-no-right", "The answer is 5. Wait, no, it's 6.", "6", 1.0),
    ("corr-wait-then-check", "The answer is 12. Wait, 12 / 3 = 4 so it checks out.", "12", 1.0),
    ("corr-wait-then-new-sentence", "The answer is 12. Wait, 3 more apples arrived.", "12", 1.0),
    ("corr-no-comma", "The answer is 5. No, 6.", "6", 1.0),
    ("corr-no-comma-neg", "The answer is 5. No, 6.", "5", 0.0),
    ("corr-latex", "The answer is 5. Actually, it's $\\frac{1}{2}$.", "0.5", 1.0),
    ("neg-actually-explains", "The answer is 7. Actually, this makes sense because 3+4=7.", "7", 1.0),
    ("neg-hedge-or", "The answer is 5 or 6.", "5", 0.0),
    ("neg-hedge-or-box", "\\boxed{5 \\text{ or } 6}", "5", 0.0),
    ("neg-hedge-comma-box", "\\boxed{5, 6}", "5", 0.0),
    ("neg-hedge-and", "\\boxed{5 and 6}", "6", 0.0),
    ("neg-hedge-pm", "\\boxed{5 \\pm 1}", "5", 0.0),
    ("neg-empty-box", "The answer is \\boxed{}", "5", 0.0),
    ("neg-empty-box-text-right", "It is 5. \\boxed{}", "5", 0.0),
    ("neg-unclosed-box", "so the answer is \\boxed{5", "5", 0.0),
    ("neg-no-answer", "I do not know how to solve this.", "5", 0.0),
    ("neg-empty-response", "", "5", 0.0),
    ("neg-number-in-wrong-place", "\\boxed{15}", "5", 0.0),
    ("neg-digits-reordered", "\\boxed{51}", "15", 0.0),
    ("neg-substring", "\\boxed{42}", "4", 0.0),
    ("neg-extra-digit-thousands", "\\boxed{10,000}", "1000", 0.0),
    ("neg-wrong-unit-value", "\\boxed{50 cm}", "5", 0.0),
    ("neg-hash-wrong-text-right", "So the answer is 72.\n#### 71", "72", 0.0),
    ("neg-answer-is-wrong-last-number-right", "The answer is 8. Check: 4+4 = 8, total 72", "72", 0.0),
    ("neg-garbage-latex", "\\boxed{\\frac{}{}}", "1", 0.0),
    ("neg-box-letters", "\\boxed{abc}", "5", 0.0),
    # ---------------------------------------------------------------- realistic long-form responses
    ("long-cot-last-number", "Step 1: 5+3=8. Step 2: 8*2=16. So, the total is 16.", "16", 1.0),
    ("long-cot-md-heading-hash", "#### Step 1: add\n5+3=8\n#### Step 2: double\nThe answer is 16.", "16", 1.0),
    ("long-cot-md-heading-final", "#### Final Answer\n\nThe answer is 9.", "9", 1.0),
    ("long-prose-answer-falls-through", "I think the answer is: the number of apples, which is 12.", "12", 1.0),
    ("long-minerva-box", "Therefore, the final answer is: $\\boxed{12}$. I hope it is correct.", "12", 1.0),
    ("long-escaped-dollar-in-math", "The answer is $\\$18$.", "18", 1.0),
    ("long-answer-parenthetical", "The answer is 6 (since 2*3).", "6", 1.0),
    ("long-answer-bold-letter", "The answer is **B**", "B", 1.0),
    ("long-answer-upper", "ANSWER: 17", "17", 1.0),
    ("long-sci-prose", "The speed is 1.2 x 10^5", "120000", 1.0),
    ("long-mixed-number", "\\boxed{3\\frac{1}{2}}", "3.5", 1.0),
    ("long-mixed-number-not-product", "\\boxed{3\\frac{1}{2}}", "1.5", 0.0),
    ("long-unevaluated-sum", "\\boxed{2+3}", "5", 1.0),
    ("long-pi-many-digits", "\\boxed{\\pi}", "3.14159265", 1.0),
    ("long-three-sig-figs-vs-surd", "\\boxed{3.464}", "2\\sqrt{3}", 0.0),
    ("long-frac-with-unit", "\\boxed{\\frac{1}{2}\\text{ cup}}", "0.5", 1.0),
    ("long-text-wrapped-number", "\\boxed{\\text{6 hours}}", "6", 1.0),
    ("long-solution-pair", "\\boxed{x=2, y=3}", "(2,3)", 1.0),
    # ---------------------------------------------------------------- whole-response answers, number words
    ("whole-inline-latex", "$\\frac{1}{2}$", "0.5", 1.0),
    ("whole-paren-latex", "\\(2x+2\\)", "2(x+1)", 1.0),
    ("whole-bracket-latex-interval", "\\[ (1, 2] \\]", "(1,2]", 1.0),
    ("whole-assignment", "x = 5", "5", 1.0),
    ("whole-hedge-list", "5, 6", "5", 0.0),
    ("words-five", "The answer is five.", "5", 1.0),
    ("words-twenty-one-unit", "The answer is twenty-one apples.", "21", 1.0),
    ("words-one-hundred", "The answer is one hundred.", "100", 1.0),
    ("words-wrong", "The answer is six.", "5", 0.0),
    ("vector-angle-brackets", "\\boxed{\\langle 1, 2 \\rangle}", "(1,2)", 1.0),
    ("unit-letter-variable-k", "\\boxed{5k}", "5", 0.0),
    ("unit-letter-variable-n", "\\boxed{3 n}", "3", 0.0),
    # ---------------------------------------------------------------- R1-style: <think> and <answer>
    ("r1-box-in-reasoning-ignored", "<think>maybe \\boxed{4}</think> The answer is 5.", "5", 1.0),
    ("r1-box-in-reasoning-not-the-answer", "<think>maybe \\boxed{4}</think> The answer is 5.", "4", 0.0),
    ("r1-unfinished-thinking", "<think>so far 5", "5", 1.0),
    ("r1-nothing-after-think", "<think>it is 5</think>", "5", 0.0),
    ("r1-answer-tag-unit", "<think>r</think><answer> 5 apples </answer>", "5", 1.0),
    ("r1-answer-tag-box", "<think>r</think><answer>\\boxed{5}</answer>", "5", 1.0),
    ("r1-answer-tag-latex", "<answer>\\frac{1}{2}</answer>", "0.5", 1.0),
    ("r1-answer-tag-sentence", "<think>5</think>\n<answer>The answer is 6.</answer>", "6", 1.0),
    ("r1-answer-tag-wrong", "<think>it is 6</think>\n<answer>5</answer>", "6", 0.0),
    # ---------------------------------------------------------------- ground-truth forms
    ("gold-gsm8k-solution", "... so 72 clips in all. #### 72", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),
    ("gold-gsm8k-solution-neg", "#### 71", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 0.0),
    ("gold-math-solution", "\\boxed{0.5}", "Hence the probability is $\\boxed{\\frac{1}{2}}$.", 1.0),
    ("gold-math-solution-neg", "\\boxed{0.25}", "Hence the probability is $\\boxed{\\frac{1}{2}}$.", 0.0),
    ("gold-math-nested", "\\boxed{\\frac{\\sqrt{3}}{2}}", "So $x=\\boxed{\\dfrac{\\sqrt{3}}{2}}$.", 1.0),
    ("gold-int-type", "#### 42", 42, 1.0),
    ("gold-float-type", "\\boxed{0.5}", 0.5, 1.0),
    ("gold-list-any", "\\boxed{6}", ["5", "6"], 1.0),
    ("gold-list-none", "\\boxed{7}", ["5", "6"], 0.0),
    ("gold-none", "\\boxed{7}", None, 0.0),
    ("gold-whitespace", "\\boxed{15}", " 15 ", 1.0),
]


@pytest.mark.parametrize("response, ground_truth, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_math_case(response, ground_truth, expected):
    out = compute_score("question", response, ground_truth)
    assert set(out) >= {"score", "extracted", "reason"}
    assert isinstance(out["score"], float)
    assert out["score"] == expected, out


def test_case_table_is_large_and_unique():
    assert len(CASES) >= 150
    assert len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- extraction: what and how

@pytest.mark.parametrize("response, answer, how", [
    ("x \\boxed{4} y", "4", "boxed"),
    ("\\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}", "boxed"),
    ("first \\boxed{3}, finally \\boxed{\\dfrac{3}{4}}", "\\dfrac{3}{4}", "boxed"),
    ("\\boxed{}", "", "boxed"),
    ("\\boxed{5", None, "unclosed boxed"),
    ("blah\n#### 9", "9", "####"),
    ("#### 1,234", "1,234", "####"),
    ("The answer is 7.", "7", "answer is"),
    ("The answer is 7, since 3+4=7", "7", "answer is"),
    ("The answer is 12 because 3*4=12", "12", "answer is"),
    ("The answer is $\\frac{1}{2}$, which is half.", "\\frac{1}{2}", "answer is"),
    ("The answer is $1,234.50.", "1,234.50", "answer is"),
    ("The answer is 5... actually 6", "6", "answer is"),
    ("The answer is (1, 2], since f is increasing", "(1, 2]", "answer is"),
    ("The answer is 7. Actually, this makes sense because 3+4=7.", "7", "answer is"),
    ("$\\frac{1}{2}$", "\\frac{1}{2}", "whole response"),
    (" 15", "15", "whole response"),
    ("#### Step 1: add\nso 5", "5", "last number"),
    ("#### The answer is 9", "9", "answer is"),
    ("<think>\\boxed{4}</think>", None, "nothing after </think>"),
    ("<think>r</think><answer> 7 </answer>", "7", "answer tag"),
    ("3 then 12", "12", "last number"),
    ("from 3-5", "5", "last number"),
    ("it fell to -5", "-5", "last number"),
    ("no numbers at all", None, "none"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_extract_answer(response, answer, how):
    assert extract_answer(response) == (answer, how)


def test_extract_without_fallback():
    assert extract_answer("3 then 12", fallback_last_number=False) == (None, "none")
    out = compute_score("q", "3 then 12", "12", fallback_last_number=False)
    assert out["score"] == 0.0 and out["extracted"] is None and out["reason"] == "no answer found"
    # the other rules still apply without the fallback
    assert compute_score("q", "\\boxed{12}", "12", fallback_last_number=False)["score"] == 1.0


def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{2}{3}} c") == "\\frac{2}{3}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed 7") == "7"
    assert last_boxed("nothing here") is None
    assert last_boxed("\\boxed{1") is None
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"


def test_gold_answer():
    assert gold_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72") == "72"
    assert gold_answer("so the answer is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer(" 15 ") == "15"
    assert gold_answer(42) == "42"


@pytest.mark.parametrize("a, b, expected", [
    ("1,000", "1000", True), ("0.50", "1/2", True), ("50%", "0.5", True), ("50%", "50", True),
    ("0.5", "50", False), ("2x+2", "2(x+1)", True), ("x=5", "5", True), ("5 cm", "5", True),
    ("\\{1,2,3\\}", "{3,2,1}", True), ("(1,2]", "(1,2)", False), ("", "5", False),
])
def test_is_equivalent(a, b, expected):
    assert is_equivalent(a, b) is expected


# ---------------------------------------------------------------- robustness

def test_reason_diagnostics():
    assert compute_score("q", "\\boxed{5}", "5")["reason"] == "boxed: match"
    assert compute_score("q", "\\boxed{4}", "5")["reason"] == "boxed: mismatch"
    assert compute_score("q", "#### 5", "5")["reason"] == "####: match"
    assert compute_score("q", "The answer is 5.", "5")["reason"] == "answer is: match"
    assert compute_score("q", "it is 5", "5")["reason"] == "last number: match"
    assert compute_score("q", "nothing", "5")["reason"] == "no answer found"
    assert "empty" in compute_score("q", "\\boxed{}", "5")["reason"]
    assert "unclosed" in compute_score("q", "\\boxed{5", "5")["reason"]
    assert compute_score("q", "<think>5</think>", "5")["reason"] == "nothing after </think>"


def test_never_raises_on_odd_input():
    for response, truth in [(None, "5"), (12, "12"), ("\\boxed{5}", object()), ("\\boxed{\\frac{1}{0}}", "1"),
                            ("\\boxed{" + "{" * 500 + "}" * 500 + "}", "1"), ("\\boxed{\\sqrt{}}", "\\sqrt{}"),
                            ("\\boxed{1/0}", "1/0"), ("#### ", "5"), ("\\boxed{5}", "")]:
        out = compute_score("q", response, truth)
        assert out["score"] in (0.0, 1.0) and "reason" in out


def test_internal_error_scores_zero_with_reason(monkeypatch):
    import reward_fns.math as m

    def boom(a, b):
        raise RuntimeError("kaput")

    monkeypatch.setattr(m, "is_equivalent", boom)
    out = m.compute_score("q", "\\boxed{5}", "5")
    assert out["score"] == 0.0 and "kaput" in out["reason"] and out["extracted"] == "5"


def test_too_long_answer_is_refused():
    out = compute_score("q", "\\boxed{" + "1+" * 2000 + "1}", "2001")
    assert out["score"] == 0.0 and "too long" in out["reason"]


def test_huge_garbage_is_fast():
    junk = ("lorem ipsum 3.14 {[( answer is $ \\frac{ #### " * 20000)
    t0 = time.perf_counter()
    for response in [junk, junk + " \\boxed{7}", "answer " * 100000, "9" * 200000, "{" * 200000 + "\\boxed{7}",
                     " " * 200000 + "x", "\\boxed{" * 50000]:
        compute_score("q", response, "7")
    assert time.perf_counter() - t0 < 5.0


def test_plain_numbers_skip_math_verify(monkeypatch):
    import reward_fns.math as m

    def no_mv(*a, **k):
        raise AssertionError("math-verify called for plain numbers")

    monkeypatch.setattr(m, "_mv_equal", no_mv)
    for response, truth, score in [("#### 1,234", "1234", 1.0), ("\\boxed{0.5}", "1/2", 1.0),
                                   ("The answer is 50%.", "0.5", 1.0), ("\\boxed{12 dollars}", "13", 0.0),
                                   ("\\boxed{\\frac{3}{4}}", "0.75", 1.0), ("\\boxed{1.5e3}", "1500", 1.0)]:
        assert m.compute_score("q", response, truth)["score"] == score


def test_plain_numbers_are_fast():
    t0 = time.perf_counter()
    for i in range(2000):
        compute_score("q", f"She has {i} apples.\n#### {i}", str(i))
    assert time.perf_counter() - t0 < 2.0


def test_explosive_input_off_main_thread_does_not_hang():
    # math-verify's timeouts are signal-based and only work on the main thread; off it they are
    # disabled and inputs that make sympy explode are refused up front.
    results = {}

    def work():
        results["tower"] = compute_score("q", "\\boxed{9^{9^{9^{9}}}}", "1")
        results["plain"] = compute_score("q", "\\boxed{2(x+1)}", "2x+2")

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert results["tower"]["score"] == 0.0 and "complex" in results["tower"]["reason"]
    assert results["plain"]["score"] == 1.0


def test_explosive_input_on_main_thread_is_bounded(monkeypatch):
    import reward_fns.math as m

    monkeypatch.setattr(m, "MV_TIMEOUT_S", 1)
    t0 = time.perf_counter()
    out = m.compute_score("q", "\\boxed{9^{9^{9^{9}}}}", "1")
    assert out["score"] == 0.0
    assert time.perf_counter() - t0 < 10


def test_deep_nesting_is_refused_fast():
    t0 = time.perf_counter()
    out = compute_score("q", "\\boxed{" + "{" * 100 + "1" + "}" * 100 + "}", "1")
    assert out["score"] == 0.0 and "nested" in out["reason"]
    assert time.perf_counter() - t0 < 1.0


class _OuterTimeout(Exception):
    pass


@pytest.fixture
def outer_alarm():
    """Arm an ITIMER_REAL alarm like the reward manager's; restore whatever was there (pytest-timeout)."""
    import signal

    fired = []

    def on_alarm(*a):
        fired.append(1)
        raise _OuterTimeout()

    prev_handler = signal.signal(signal.SIGALRM, on_alarm)
    prev_timer = signal.getitimer(signal.ITIMER_REAL)
    t_start = time.monotonic()

    def arm(seconds):
        signal.setitimer(signal.ITIMER_REAL, seconds)

    try:
        yield arm, fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev_handler)
        if prev_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(prev_timer[0] - (time.monotonic() - t_start), 1.0))


def test_outer_alarm_left_armed(outer_alarm):
    # Under the reward manager an ITIMER_REAL alarm bounds each call; math-verify's own alarm would
    # cancel it, so it must be re-armed with what is left of it.
    import signal

    arm, fired = outer_alarm
    arm(30.0)
    assert compute_score("q", "\\boxed{2(x+1)}", "2x+2")["score"] == 1.0
    remaining = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 25 < remaining <= 30.0 and not fired


def test_outer_alarm_that_runs_out_still_fires(outer_alarm):
    # A hanging comparison must not swallow the manager's timeout: its alarm still fires and the
    # exception propagates (so the manager counts a timeout), within about the outer budget.
    arm, fired = outer_alarm
    t0 = time.perf_counter()
    arm(1.0)
    with pytest.raises(_OuterTimeout):
        compute_score("q", "\\boxed{9^{9^{9^{9}}}}", "1")
    assert fired and time.perf_counter() - t0 < 5


def test_through_the_reward_manager():
    from rlengine.config import RewardConfig, RewardFnConfig
    from rlengine.rewards import RewardManager

    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn="reward_fns/math.py:compute_score")], num_workers=1,
                                   timeout_s=10.0))
    try:
        r = m.score(["q"] * 4, ["\\boxed{2(x+1)}", "#### 1,000", "The answer is 7, since 3+4=7", "\\boxed{5}"],
                    ["2x+2", "1000", "7", "6"], [{}] * 4)
    finally:
        m.close()
    assert (r.errors, r.timeouts) == (0, 0)
    assert r.scores_N.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_a_hanging_comparison_is_a_manager_timeout():
    from rlengine.config import RewardConfig, RewardFnConfig
    from rlengine.rewards import RewardManager

    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn="reward_fns/math.py:compute_score")], num_workers=1,
                                   timeout_s=3.0))
    try:
        m.score(["q"], ["\\boxed{2(x+1)}"], ["2x+2"], [{}])  # warm the worker (imports)
        t0 = time.perf_counter()
        r = m.score(["q"], ["\\boxed{9^{9^{9^{9}}}}"], ["1"], [{}])
        elapsed = time.perf_counter() - t0
    finally:
        m.close()
    assert (r.errors, r.timeouts) == (0, 1)
    assert elapsed < 10
