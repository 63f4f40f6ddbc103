"""A second, held-out batch of math cases (issue 17), written after the rules in reward_fns/math.py
were tuned on math_peer_cases.py and measured before any code was changed for them: (id, source,
response, reference, expected verdict), in the same format as math_peer_cases.PEER_CASES.  Responses
are written as models write them (a chain of thought ending in a box, Minerva's "Final Answer" line,
R1 <think> blocks, answers stated in prose); the verdict is a careful grader's, following the peer's
convention where the peers agree (see the notes by each group).

Sources (tags):
  qwen-grader   QwenLM/Qwen2.5-Math evaluation/grader.py: its _test_math_equal pairs and unit tests
                (tuples with decimals, equations against their right-hand side, symbolic identities,
                choices "(A) 3")
  simple-evals  openai/simple-evals math_eval.py EQUALITY_TEMPLATE examples ("3/2" == "1.5",
                "2/(-3)" == "-2/3", "72 degrees" == "72", "64" == "64 square feet"; the template's
                "3245/5" vs "649" is marked equal here: the values are equal)
  minerva-norm  lm-eval minerva_math normalize_final_answer (unit words it drops: ways, students,
                edges, dollars, degrees ...; "\\text{ and }" lists)
  prm800k       openai/prm800k grading/grader.py (tuples compared element-wise, units, "\\!" spacing)
  rllm          agentica-project/rllm (DeepScaleR) math reward: answer after </think>, boxed, sympy
  verl-prime    volcengine/verl prime_math / math_verify rewards (repeating decimals, "Answer:" line)
  open-instruct allenai/open-instruct math_utils (minerva-style "Final Answer" and boxed extraction)
  probes        the five fresh probes that were wrong on the first batch's rules (pi/4 vs 45 degrees,
                e^{i pi}, 0.\\overline{3}, "the numbers are 3 and 4", "..., which is about 0.139")
  mv-issue-N, lm-eval-N, torchtitan-4442, skyrl, slime
                second slice: Math-Verify issues #16 #57 #70, lm-eval issues #2552 #3477 #3643,
                pytorch/torchtitan PR #4442, skyrl-gym tests/test_aime.py, slime
                tests/test_math_reward_utils.py (25 cases, all right before any change for them)
  probes-2      third slice: fresh probes of the answer forms listed in the issue's brief, written
                after the first two slices were fixed and measured before the changes they led to
Rates before any change for this batch: 152 of 168 right (90.5%); math-verify alone 145 (86.3%).
Conventions decided here: degrees are not converted to radians (as the MATH and Qwen graders do:
they drop "^\\circ" and compare numbers), so "\\frac{\\pi}{4}" != "45^\\circ"; "i" is the imaginary
unit; an approximation written after an exact answer ("..., which is about 0.139") is not the answer;
a decimal matches an irrational exact value only to 6 decimal places ("0.866" != "\\frac{\\sqrt3}{2}").
"""

HELDOUT_CASES = [
    # ------------------------------------------------ the five probes
    ("probe-pi4-vs-45deg", "probes", r"Converting, the angle is $\boxed{\frac{\pi}{4}}$.", r"45^\circ", False),
    ("probe-e-i-pi", "probes", r"By Euler's formula the value is $\boxed{e^{i\pi}}$.", "-1", True),
    ("probe-repeating-third", "probes", r"So the probability is $\boxed{\dfrac{1}{3}}$.", r"0.\overline{3}", True),
    ("probe-numbers-are-3-and-4", "probes", "Adding, $a+b = 7$, and since $ab = 12$, the numbers are 3 and 4.", "3, 4", True),
    ("probe-approx-after-exact", "probes", r"So the probability is $\dfrac{5}{36}$, which is about 0.139.", r"\frac{5}{36}", True),
    # ------------------------------------------------ Qwen2.5-Math grader pairs
    ("qwen-g-316-317", "qwen-grader", r"Summing the residues gives $\boxed{316}$.", "317", False),
    ("qwen-g-tuple-decimal", "qwen-grader", r"The center is $\boxed{(1.0, 4.5)}$.", r"(1,\frac{9}{2})", True),
    ("qwen-g-power", "qwen-grader", r"\boxed{2^2}", "4", True),
    ("qwen-g-551-vs-half", "qwen-grader", r"\boxed{5.51}", r"\frac{11}{2}", False),
    ("qwen-g-16-point-0", "qwen-grader", r"The final answer is $16.0$.", "16", True),
    ("qwen-g-complex-wrong", "qwen-grader", r"\boxed{6.0+9.1i}", "6+9.2i", False),
    ("qwen-g-i-squared", "qwen-grader", r"\boxed{10 - 10i^2}", "20", True),
    ("qwen-g-sympy-power", "qwen-grader", r"\boxed{3s^2}", "3*s**2", True),
    ("qwen-g-factored-poly", "qwen-grader", r"\boxed{2x(15x^2-4x+10)}", "2*x*(15*x**2 - 4*x + 10)", True),
    ("qwen-g-factor-order", "qwen-grader", r"\boxed{7(x+3)(x-3)}", "7*(x - 3)*(x + 3)", True),
    ("qwen-g-cube-roots", "qwen-grader", r"\boxed{-\frac{8x^2}{9(x^2-2)^{5/3}}+\frac{2}{3(x^2-2)^{2/3}}}", r"-\frac{2(x^2+6)}{9(x^2-2)\sqrt[3]{x^2-2}^2}", True),
    ("qwen-g-subscript-braces", "qwen-grader", r"\boxed{x_{0}\cos(\omega t)}", r"x_0\cos(\omega t)", True),
    ("qwen-g-function-equation", "qwen-grader", r"\boxed{I(t)=I(0)e^{-\frac{t}{RC}}}", r"I(0)e^{-\frac{t}{RC}}", True),
    ("qwen-g-column-spacing", "qwen-grader", r"\boxed{\begin{pmatrix}-10\\6\end{pmatrix}}", r"\begin{pmatrix} -10 \\ 6 \end{pmatrix}", True),
    ("qwen-g-left-right-pair", "qwen-grader", r"\boxed{\left( 6, -\frac{3}{8} \right)}", r"(6, -\frac{3}{8})", True),
    ("qwen-g-choice-paren", "qwen-grader", "Comparing the options, the answer is (A) 3.", "A", True),
    ("qwen-g-choice-wrong", "qwen-grader", "Comparing the options, the answer is (B).", "A", False),
    ("qwen-g-percent-ten", "qwen-grader", r"The rate dropped by $\boxed{10\%}$.", "0.1", True),
    ("qwen-g-equation-10", "qwen-grader", r"\boxed{x = 10}", "10", True),
    ("qwen-g-eq-reversed-sides", "qwen-grader", r"\boxed{y = 2x + 3}", "2x+3", True),
    ("qwen-g-eq-wrong-slope", "qwen-grader", r"\boxed{y = 3x + 2}", "y = 2x + 3", False),
    # ------------------------------------------------ simple-evals equality examples
    ("se-commuted", "simple-evals", "Answer: $3+2x$", "2x+3", True),
    ("se-three-halves", "simple-evals", "Answer: 1.5", "3/2", True),
    ("se-renamed-variable", "simple-evals", "Answer: $y^2+2y+1$", "x^2+2x+1", False),
    ("se-expanded-square", "simple-evals", "Answer: $(x+1)^2$", "x^2+2x+1", True),
    ("se-unreduced-fraction", "simple-evals", "Answer: 3245/5", "649", True),
    ("se-negative-denominator", "simple-evals", "Answer: 2/(-3)", "-2/3", True),
    ("se-degrees-word", "simple-evals", "Answer: 72 degrees", "72", True),
    ("se-square-feet", "simple-evals", "Answer: 64 square feet", "64", True),
    ("se-answer-line-last", "simple-evals", "The perimeter is 2(5+7) = 24.\nAnswer: 24", "24", True),
    ("se-answer-line-wrong", "simple-evals", "The perimeter is 2(5+7) = 24.\nAnswer: 35", "24", False),
    # ------------------------------------------------ minerva normalisation (unit words, lists)
    ("mn-ways", "minerva-norm", r"There are $\boxed{10 \text{ ways}}$ to choose them.", "10", True),
    ("mn-students", "minerva-norm", r"Final Answer: The final answer is $24$ students. I hope it is correct.", "24", True),
    ("mn-edges", "minerva-norm", r"The solid has $\boxed{12\text{ edges}}$.", "12", True),
    ("mn-dollars-text", "minerva-norm", r"She saved $\boxed{\$1,\!250}$ in all.", "1250", True),
    ("mn-and-text-list", "minerva-norm", r"\boxed{2 \text{ and } 5}", "2, 5", True),
    ("mn-and-text-list-wrong", "minerva-norm", r"\boxed{2 \text{ and } 6}", "2, 5", False),
    ("mn-final-answer-frac", "minerva-norm", "We have $\\frac{3}{4}\\cdot\\frac{2}{3}=\\frac12$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", True),
    ("mn-final-answer-interval", "minerva-norm", "So the solution set is all $x$ with $x>3$.\nFinal Answer: The final answer is $(3,\\infty)$. I hope it is correct.", r"(3, \infty)", True),
    ("mn-final-answer-interval-closed", "minerva-norm", "Final Answer: The final answer is $[3,\\infty)$. I hope it is correct.", r"(3, \infty)", False),
    ("mn-text-answer", "minerva-norm", r"Final Answer: The final answer is $\text{(B)}$. I hope it is correct.", "B", True),
    # ------------------------------------------------ PRM800K-style answers
    ("prm2-tuple-elementwise", "prm800k", r"Thus $(a,b,c) = \boxed{(2, -3, \frac{1}{2})}$.", r"(2,-3,0.5)", True),
    ("prm2-tuple-order", "prm800k", r"Thus $(a,b,c) = \boxed{(-3, 2, \frac{1}{2})}$.", r"(2,-3,0.5)", False),
    ("prm2-pm-set", "prm800k", r"Hence $x = \boxed{\pm 3}$.", "3, -3", True),
    ("prm2-pm-one-root", "prm800k", r"Hence $x = \boxed{3}$.", r"\pm 3", False),
    ("prm2-radical-simplified", "prm800k", r"The side is $\boxed{\sqrt{12}}$.", r"2\sqrt{3}", True),
    ("prm2-radical-wrong", "prm800k", r"The side is $\boxed{3\sqrt{2}}$.", r"2\sqrt{3}", False),
    ("prm2-sqrt3-over-2-approx", "prm800k", r"\boxed{0.866}", r"\frac{\sqrt{3}}{2}", False),
    ("prm2-sqrt3-over-2-exact", "prm800k", r"\boxed{\frac{\sqrt3}{2}}", r"\frac{\sqrt{3}}{2}", True),
    ("prm2-degree-circ", "prm800k", r"so $\angle ABC = \boxed{30^\circ}$.", "30", True),
    ("prm2-degree-wrong", "prm800k", r"so $\angle ABC = \boxed{60^\circ}$.", "30", False),
    ("prm2-pi-over-6-vs-30deg", "prm800k", r"\boxed{\frac{\pi}{6}}", r"30^\circ", False),
    ("prm2-sci-notation", "prm800k", r"\boxed{6.02 \times 10^{23}}", "6.02e23", True),
    ("prm2-sci-notation-wrong", "prm800k", r"\boxed{6.02 \times 10^{22}}", "6.02e23", False),
    ("prm2-infinity", "prm800k", r"The limit is $\boxed{\infty}$.", r"\infty", True),
    ("prm2-neg-infinity", "prm800k", r"The limit is $\boxed{-\infty}$.", r"\infty", False),
    ("prm2-complex-commuted", "prm800k", r"\boxed{4i+3}", "3+4i", True),
    ("prm2-complex-square", "prm800k", r"\boxed{(1+i)^2}", "2i", True),
    ("prm2-complex-conjugate", "prm800k", r"\boxed{3-4i}", "3+4i", False),
    ("prm2-matrix-2x2", "prm800k", "Therefore\n\\[\\mathbf{M} = \\boxed{\\begin{pmatrix} 2 & -1 \\\\ 0 & 3 \\end{pmatrix}}.\\]", r"\begin{pmatrix}2&-1\\0&3\end{pmatrix}", True),
    ("prm2-matrix-transposed", "prm800k", r"\boxed{\begin{pmatrix} 2 & 0 \\ -1 & 3 \end{pmatrix}}", r"\begin{pmatrix}2&-1\\0&3\end{pmatrix}", False),
    ("prm2-repeating-decimal", "verl-prime", r"\boxed{0.\overline{36}}", r"\frac{4}{11}", True),
    ("prm2-repeating-decimal-mixed", "verl-prime", r"\boxed{\frac{1}{6}}", r"0.1\overline{6}", True),
    ("prm2-repeating-decimal-wrong", "verl-prime", r"\boxed{\frac{1}{3}}", r"0.\overline{6}", False),
    # ------------------------------------------------ R1 / DeepScaleR (rllm) responses
    ("rllm-think-box", "rllm", "<think>\nLet me compute 17*23. 17*20=340, 17*3=51, total 391.\n</think>\n\nThe product is $\\boxed{391}$.", "391", True),
    ("rllm-think-box-wrong", "rllm", "<think>\n17*23 = 381? Let me check... 340+51=391.\n</think>\n\nThe product is $\\boxed{381}$.", "391", False),
    ("rllm-think-unclosed", "rllm", "<think>\nWe need 17*23 = 391, so the answer is \\boxed{391}", "391", True),
    ("rllm-think-aime-leading-zero", "rllm", "<think>long work</think>\nThus the remainder when divided by 1000 is $\\boxed{042}$.", "42", True),
    ("rllm-think-fraction-sum", "rllm", "<think>m/n = 7/16 so m+n = 23</think>\nSince $\\frac{m}{n} = \\frac{7}{16}$, we get $m + n = \\boxed{23}$.", "23", True),
    ("rllm-answer-tag-box", "rllm", "<think>compute</think>\n<answer>\\boxed{\\frac{7}{16}}</answer>", "7/16", True),
    ("rllm-think-interval", "rllm", "<think>f is defined when x-2>0</think>\nThe domain is $\\boxed{(2, \\infty)}$.", r"(2,\infty)", True),
    ("rllm-think-interval-wrong", "rllm", "<think>f is defined when x-2>0</think>\nThe domain is $\\boxed{[2, \\infty)}$.", r"(2,\infty)", False),
    # ------------------------------------------------ open-instruct / generic chain-of-thought endings
    ("oi-hope-correct", "open-instruct", "The two legs are 5 and 12, so the hypotenuse is $\\sqrt{25+144}=13$.\nFinal Answer: The final answer is $13$. I hope it is correct.", "13", True),
    ("oi-hope-correct-wrong", "open-instruct", "The two legs are 5 and 12, so the hypotenuse is $\\sqrt{25+144}=13$.\nFinal Answer: The final answer is $17$. I hope it is correct.", "13", False),
    ("oi-boxed-then-prose", "open-instruct", "Multiplying out, the total cost is $3 \\times 4.50 = 13.50$. So the answer is $\\boxed{13.50}$ dollars.", "13.5", True),
    ("oi-percent-prose", "open-instruct", "The fraction that are red is $\\frac{15}{60} = 0.25$, so $\\boxed{25\\%}$ of the marbles are red.", "25", True),
    ("oi-x-equals", "open-instruct", "Subtracting 3 from both sides gives $2x = 4$, so $\\boxed{x=2}$.", "2", True),
    ("oi-x-equals-wrong", "open-instruct", "Subtracting 3 from both sides gives $2x = 4$, so $\\boxed{x=-2}$.", "2", False),
    ("oi-ordered-pair-inline", "open-instruct", "Solving the system, we find that the intersection point is $(3, -1)$.", "(3,-1)", True),
    ("oi-ordered-pair-inline-swapped", "open-instruct", "Solving the system, we find that the intersection point is $(-1, 3)$.", "(3,-1)", False),
    ("oi-units-km", "open-instruct", "Distance = speed x time = 60 x 2.5 = 150 km.\nThe answer is 150 km.", "150", True),
    ("oi-hours-minutes", "open-instruct", "So the trip takes $\\boxed{2.5}$ hours.", "2.5", True),
    ("oi-words-then-number", "open-instruct", "Each box has 12 pencils and there are 7 boxes, so there are 84 pencils in total.", "84", True),
    ("oi-approx-after-exact-box", "open-instruct", r"The exact area is $\boxed{8\pi}$, approximately 25.13 square units.", r"8\pi", True),
    ("oi-approx-only", "open-instruct", "The area is $8\\pi$, which is approximately 25.13.", r"8\pi", True),
    ("oi-approx-decimal-gold", "open-instruct", "So the answer is approximately 25.13.", "25.13", True),
    ("oi-list-of-solutions", "open-instruct", "Factoring, $(x-2)(x+5)=0$, so the solutions are $x=2$ and $x=-5$.", "2, -5", True),
    ("oi-list-of-solutions-wrong", "open-instruct", "Factoring, $(x-2)(x+5)=0$, so the solutions are $x=2$ and $x=5$.", "2, -5", False),
    ("oi-hedged-two-answers", "open-instruct", "It could be 4 or it could be 6; I'm not sure which.", "4", False),
    ("oi-truncated-box", "open-instruct", "Putting it together, the sum is \\boxed{\\frac{12", r"\frac{12}{7}", False),
    # ------------------------------------------------ second slice (measured before any change for it)
    # Math-Verify issues #16, #57, #70; lm-eval issues #2552, #3477; torchtitan PR #4442; SkyRL
    # skyrl-gym tests/test_aime.py; slime tests/test_math_reward_utils.py; a verl recipe's set-union test
    ("mvi16-boxed-letter", "mv-issue-16", "Comparing the four options, only the second works. \\boxed{B}", "B", True),
    ("mvi16-boxed-letter-wrong", "mv-issue-16", "Comparing the four options, only the second works. \\boxed{C}", "B", False),
    ("mvi57-box-unit-then-box", "mv-issue-57", r"\boxed{35 cm} ++++++ \boxed{4}", "4", True),
    ("mvi57-box-unit-then-box-first", "mv-issue-57", r"\boxed{35 cm} ++++++ \boxed{4}", "35", False),
    ("mvi70-bare-dfrac-gold", "mv-issue-70", r"So the ratio is $\boxed{\frac{9}{7}}$.", r"\dfrac{9}{7}", True),
    ("mvi70-bare-dfrac-gold-wrong", "mv-issue-70", r"So the ratio is $\boxed{\frac{7}{9}}$.", r"\dfrac{9}{7}", False),
    ("lme2552-display-box", "lm-eval-2552", r"... some reasoning logic ... Thus the answer is \[ \boxed{42} \]", "42", True),
    ("lme3477-echoed-instruction", "lm-eval-3477", "Mark your solution with \\boxed\nThe two roots sum to $-b/a = 7$, so the answer is $\\boxed{7}$.", "7", True),
    ("lme3643-bold-answer-line", "lm-eval-3643", "The positive square root of 64 is $ \\sqrt{64} = 8 $, and the cube root of 64 is $ \\sqrt[3]{64} = 4 $. The difference between them is $ 8 - 4 = 4 $.\n\n**Answer:** 4.", "4", True),
    ("titan4442-answer-in-display", "torchtitan-4442", "Final Answer:\n  The last three digits of \\(2003^{2002^{2001}}\\) are:\n  \\[Answer: 009\\]", "9", True),
    ("titan4442-answer-in-display-box", "torchtitan-4442", "Final Answer:\n  The last three digits of \\(2003^{2002^{2001}}\\) are:\n  \\[Answer: \\boxed{009}\\]", "9", True),
    ("skyrl-answer-box", "skyrl", "Answer: \\boxed{42}", "42", True),
    ("skyrl-answer-plain", "skyrl", "Answer: 42", "42", True),
    ("skyrl-answer-box-wrong", "skyrl", "Answer: \\boxed{43}", "42", False),
    ("skyrl-half-decimal", "skyrl", "Answer: \\boxed{0.5}", r"\frac{1}{2}", True),
    ("skyrl-words-number", "skyrl", "Answer: \\boxed{\\text{forty-two}}", "42", True),
    ("skyrl-eos-im-end", "skyrl", "<|im_start|>Answer: \\boxed{42}<|im_end|>", "42", True),
    ("skyrl-eos-broken-token", "skyrl", "<|im_start|>Answer: \\boxed{42}im_end|>", "42", True),
    ("skyrl-eos-eot", "skyrl", "Answer: \\boxed{42}<|eot_id|>", "42", True),
    ("slime-answer-box", "slime", "Reasoning steps...\nAnswer: \\boxed{25}", "25", True),
    ("slime-answer-line", "slime", "Here is the result.\nAnswer: 25", "25", True),
    ("slime-bare", "slime", "25", "25", True),
    ("slime-zero", "slime", "Answer: \\boxed{0}", "0", True),
    ("verl-recipe-set-union", "verl-prime", "${1,2,3,4}$", r"{1,3} \cup {2,4}", True),
    ("verl-recipe-set-union-wrong", "verl-prime", "${1,2,3,5}$", r"{1,3} \cup {2,4}", False),
    # ------------------------------------------------ third slice: fresh probes of the brief's answer forms
    # (intervals, equations, choices, units, complex numbers, ratios, ...), measured before the changes
    # they led to (44 of these 48 right then; math-verify alone 42)
    ('pr2-pm-zeros', "probes-2", 'Let $f(x)=x^2-4$. The zeros are where $x^2=4$, so $x=\\pm 2$.', '-2, 2', True),
    ('pr2-set-from-pm', "probes-2", 'So the set of solutions is $\\{-2, 2\\}$.', '\\pm 2', True),
    ('pr2-vertex-pair', "probes-2", 'The vertex is at $(h, k) = (3, -4)$.', '(3,-4)', True),
    ('pr2-line-eq', "probes-2", 'Hence the equation of the line is $y = -\\frac{1}{2}x + 4$.', 'y=-\\frac12 x+4', True),
    ('pr2-line-eq-wrong-slope', "probes-2", 'Hence the equation of the line is $y = -\\frac{1}{2}x + 4$.', 'y=\\frac12 x+4', False),
    ('pr2-answer-x-eq', "probes-2", 'The answer is $x = 7$.', '7', True),
    ('pr2-hours-frac', "probes-2", 'The answer is $\\frac{7}{2}$ hours.', '3.5', True),
    ('pr2-chain-eq-percent', "probes-2", 'So $P = \\frac{3}{8} = 37.5\\%$.', '\\frac38', True),
    ('pr2-sci-small', "probes-2", 'Therefore the answer is $2.5 \\times 10^{-3}$.', '0.0025', True),
    ('pr2-sci-small-wrong', "probes-2", 'Therefore the answer is $2.5 \\times 10^{-3}$.', '0.025', False),
    ('pr2-union-intervals', "probes-2", 'The interval is $(-\\infty, -1] \\cup [3, \\infty)$.', '(-\\infty,-1]\\cup[3,\\infty)', True),
    ('pr2-union-intervals-open', "probes-2", 'The interval is $(-\\infty, -1) \\cup [3, \\infty)$.', '(-\\infty,-1]\\cup[3,\\infty)', False),
    ('pr2-column-vector', "probes-2", '\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}}', '\\begin{pmatrix}1\\\\2\\\\3\\end{pmatrix}', True),
    ('pr2-row-vs-column', "probes-2", '\\boxed{\\begin{pmatrix} 1 & 2 & 3 \\end{pmatrix}}', '\\begin{pmatrix}1\\\\2\\\\3\\end{pmatrix}', False),
    ('pr2-sqrt2-over-2', "probes-2", '\\boxed{\\frac{\\sqrt{2}}{2}}', '\\frac{1}{\\sqrt{2}}', True),
    ('pr2-rationalised-conjugate', "probes-2", '\\boxed{2+\\sqrt{3}}', '\\frac{1}{2-\\sqrt{3}}', True),
    ('pr2-sqrt2-approx', "probes-2", '\\boxed{1.41}', '\\sqrt{2}', False),
    ('pr2-boxed-choice-paren', "probes-2", 'The final answer is $\\boxed{(A)}$.', 'A', True),
    ('pr2-choice-with-value', "probes-2", 'The final answer is (E) 250.', 'E', True),
    ('pr2-choice-bare', "probes-2", 'I think the answer is D.', 'D', True),
    ('pr2-choice-wrong', "probes-2", 'Answer: C', 'D', False),
    ('pr2-think-bold', "probes-2", '<think>\nOkay so 3 + 5 = 8. Wait, the problem asks for the product. 3 * 5 = 15.\n</think>\n\nThe product is **15**.', '15', True),
    ('pr2-think-bold-wrong', "probes-2", '<think>\nOkay so 3 + 5 = 8.\n</think>\n\nThe product is **8**.', '15', False),
    ('pr2-kmh-text', "probes-2", 'The speed is $\\boxed{60\\text{ km/h}}$.', '60', True),
    ('pr2-kmh-thin-space', "probes-2", 'The speed is $\\boxed{60\\,\\text{km/h}}$.', '60', True),
    ('pr2-dollar-box', "probes-2", 'He needs $\\boxed{\\$3.75}$ more.', '3.75', True),
    ('pr2-degree-braces', "probes-2", 'The angle measures $\\boxed{120^{\\circ}}$.', '120', True),
    ('pr2-radians-vs-degrees', "probes-2", 'The angle measures $\\boxed{\\frac{2\\pi}{3}}$.', '120^\\circ', False),
    ('pr2-complex-box', "probes-2", 'Thus $z = \\boxed{-1 + 2i}$.', '-1+2i', True),
    ('pr2-complex-commuted', "probes-2", 'Thus $z = \\boxed{2i - 1}$.', '-1+2i', True),
    ('pr2-complex-conjugate', "probes-2", 'Thus $z = \\boxed{-1 - 2i}$.', '-1+2i', False),
    ('pr2-infinity', "probes-2", 'The sum of the infinite series is $\\boxed{\\infty}$.', '\\infty', True),
    ('pr2-n-equals', "probes-2", 'The smallest such $n$ is $\\boxed{n = 12}$.', '12', True),
    ('pr2-sum-after-vars', "probes-2", 'We get $a=2$, $b=5$, so $a+b=\\boxed{7}$.', '7', True),
    ('pr2-binom-prose', "probes-2", 'There are $\\binom{6}{2} = 15$ ways.', '15', True),
    ('pr2-factorial-prose', "probes-2", 'Then $3! \\cdot 2 = 12$.', '12', True),
    ('pr2-final-frac-decimal', "probes-2", 'Final Answer: The final answer is $\\frac{1}{4}$. I hope it is correct.', '0.25', True),
    ('pr2-final-pair-order', "probes-2", 'Final Answer: The final answer is $(2,3)$. I hope it is correct.', '(3,2)', False),
    ('pr2-or-percent', "probes-2", 'The probability is 0.25 or 25%.', '\\frac{1}{4}', True),
    ('pr2-ratio-text', "probes-2", 'So the ratio is 3:2.', '3:2', True),
    ('pr2-ratio-frac', "probes-2", 'So the ratio is 3:2.', '\\frac{3}{2}', True),
    ('pr2-box-then-unit', "probes-2", '$\\boxed{10}$ cm', '10', True),
    ('pr2-hour-minutes', "probes-2", 'It takes 1 hour and 30 minutes.', '1.5', False),
    ('pr2-reject-root', "probes-2", 'Solving gives $x = 4$ or $x = -1$, but $x > 0$, so $x = 4$.', '4', True),
    ('pr2-not-5', "probes-2", 'The answer is 4, not 5.', '4', True),
    ('pr2-not-4-it-is-5', "probes-2", 'The answer is not 4; it is 5.', '5', True),
    ('pr2-dfrac-expr', "probes-2", 'After simplifying we get $\\dfrac{x+1}{x-1}$.', '\\frac{x+1}{x-1}', True),
    ('pr2-decimal-vs-frac', "probes-2", 'The expected value is $\\boxed{3.5}$.', '\\frac72', True),
]
