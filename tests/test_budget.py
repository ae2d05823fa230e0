"""The Budget object: the one check-and-subtract of spending limits (nightly --max-cost)."""

from synthloop.loop.budget import Budget


def test_a_cap_admits_the_first_costs_that_fit_and_spending_takes_them_off():
    budget = Budget(1.0)
    assert budget.capped and not budget.spent_out
    assert budget.affordable([0.4, 0.4, 0.4]) == 2  # in order: the third would pass the cap
    budget.spend(0.9)
    assert budget.left == 0.1 or abs(budget.left - 0.1) < 1e-12
    assert budget.affordable([0.2, 0.05]) == 0  # the first no longer fits, so none goes
    budget.spend(5.0)
    assert budget.left == 0.0 and budget.spent_out


def test_no_cap_admits_everything_and_never_runs_out():
    budget = Budget()
    assert not budget.capped and budget.affordable([10.0] * 3) == 3
    budget.spend(1e6)
    assert budget.left is None and not budget.spent_out


def test_the_project_keeps_its_llm_budget_attribute_as_a_facade(project):
    assert project.llm_budget is None and not project.budget.capped
    project.llm_budget = 2.5
    assert project.budget.left == 2.5
    project.budget.spend(1.0)
    assert project.llm_budget == 1.5
