"""Scenario 2 (knowledge): questions about the policies of an invented company, Kestrel Loom
Textiles, whose handbook no model has seen. The handbook is written here; each fact has three
phrasings of its question: two for training, one held out for evaluation. Answers must contain
the fact itself (``must_include``), so the comparison measures whether the model knows it."""

from __future__ import annotations

COMPANY = "Kestrel Loom Textiles"

SYSTEM_PROMPT = (f"You are the HR help desk assistant of {COMPANY}, a textile company in Coimbatore. "
                 "Answer employees' questions about company policy in one or two sentences.")

DOCS: dict[str, str] = {
    "leave-policy.md": """# Leave policy

Kestrel Loom Textiles gives every permanent employee paid leave on a calendar-year basis.

## Casual and sick leave

Employees receive 9 days of casual leave per calendar year. Casual leave cannot be carried over to
the next year. Sick leave is 12 days per year; a medical certificate is required for sick leave
longer than 3 consecutive days.

## Earned leave

Earned leave accrues at 1.5 days per completed month of service, up to 18 days a year. Up to 30
days of unused earned leave can be carried forward. Earned leave must be applied for at least
7 days in advance in the Loomdesk portal.

## Parental leave

Maternity leave is 26 weeks with full pay. Paternity leave is 15 working days, to be taken within
3 months of the child's birth or adoption.

## Public holidays

The company observes 12 public holidays a year; the list is published in the Loomdesk portal every
December.
""",
    "employment.md": """# Employment terms

## Probation and notice

Probation lasts 6 months for all new employees. The notice period is 60 days after confirmation and
15 days during probation.

## Pay and reviews

Salaries are credited on the last working day of each month. Performance reviews are held every
April. Employees contribute 12% of basic salary to the provident fund, matched by the company.
""",
    "travel-and-expenses.md": """# Travel and expenses

## Booking

All business travel is booked through the travel desk at travel@kestrelloom.example at least 5
working days before departure. Train travel is 2-tier AC for all grades; flights are economy class
and need approval from a department head.

## Daily allowance

The daily allowance for meals and local transport is ₹1,800 in metro cities and ₹1,200 elsewhere.
Hotel stays are reimbursed up to ₹6,500 per night in metro cities.

## Claims

Expense claims are filed in the Loomdesk portal within 30 days of returning from the trip, with
scanned bills for every item above ₹500. Approved claims are paid with the next monthly salary.
Using a personal car on company business is reimbursed at ₹12 per kilometre.
""",
    "remote-work.md": """# Remote work

Office staff may work from home up to 2 days per week with their manager's approval. Factory
floor roles are not eligible for remote work. Core hours are 10:30 to 16:00 IST, when everyone
must be reachable. Employees working from home receive an internet allowance of ₹1,000 per month.
""",
    "it-security.md": """# IT security

## Passwords

Passwords must be at least 14 characters long and are changed every 90 days. Multi-factor
authentication with the Kestrel Key app is mandatory for email and the Loomdesk portal.

## Incidents

Report a lost laptop or phone, or a suspicious email, to the IT helpdesk on extension 4357 within
1 hour. Personal USB drives may not be connected to company computers.

## Equipment

Laptops are replaced every 4 years.
""",
    "benefits.md": """# Benefits

## Health insurance

Group health insurance covers the employee, spouse, two children and parents for a sum insured of
₹5,00,000 per family per year, with no waiting period for pre-existing conditions.

## Learning

Each employee has a learning budget of ₹25,000 per financial year for courses and certifications
related to their role, approved by their manager.

## Canteen and transport

Lunch in the factory canteen costs ₹40 per meal, with the rest subsidised by the company. Staff
buses run from Gandhipuram and Ukkadam, leaving at 7:15 for the morning shift.
""",
}

# (three phrasings of the question, the answer, facts the answer must contain)
FACTS: list[tuple[tuple[str, str, str], str, list[str]]] = [
    (("How many casual leave days do I get per year?", "What is the annual casual leave entitlement?",
      "How much casual leave is allowed in a calendar year?"),
     "Employees receive 9 days of casual leave per calendar year.", ["9 days"]),
    (("Can I carry unused casual leave into next year?", "Does casual leave roll over to the next year?",
      "What happens to casual leave I did not take by December?"),
     "No, casual leave cannot be carried over to the next year.", ["cannot be carried over"]),
    (("How many sick leave days are there per year?", "What is the sick leave allowance?",
      "How much sick leave can I take in a year?"),
     "Sick leave is 12 days per year.", ["12 days"]),
    (("When do I need a medical certificate for sick leave?", "Is a doctor's note needed for sick leave?",
      "After how many days of sick leave must I show a medical certificate?"),
     "A medical certificate is required for sick leave longer than 3 consecutive days.", ["3 consecutive days"]),
    (("How fast does earned leave accrue?", "How much earned leave do I earn each month?",
      "At what rate is earned leave credited?"),
     "Earned leave accrues at 1.5 days per completed month of service, up to 18 days a year.", ["1.5 days"]),
    (("How much earned leave can be carried forward?", "What is the carry-forward limit for earned leave?",
      "How many unused earned leave days can I keep for next year?"),
     "Up to 30 days of unused earned leave can be carried forward.", ["30 days"]),
    (("How early must I apply for earned leave?", "How far in advance should earned leave be requested?",
      "What notice is needed before taking earned leave?"),
     "Apply at least 7 days in advance in the Loomdesk portal.", ["7 days"]),
    (("How long is maternity leave?", "What is the maternity leave duration?",
      "How many weeks of maternity leave does the company give?"),
     "Maternity leave is 26 weeks with full pay.", ["26 weeks"]),
    (("How long is paternity leave?", "How many days of paternity leave do fathers get?",
      "What is the paternity leave entitlement?"),
     "Paternity leave is 15 working days, taken within 3 months of the birth or adoption.", ["15 working days"]),
    (("How do I book business travel?", "Who books my work trips?", "Where should business travel be booked?"),
     "Book all business travel through the travel desk at travel@kestrelloom.example at least 5 working days ahead.",
     ["travel@kestrelloom.example"]),
    (("What class of train travel is allowed?", "Which train class can I book for work trips?",
      "What is the train travel entitlement?"),
     "Train travel is 2-tier AC for all grades.", ["2-tier AC"]),
    (("What is the daily allowance in metro cities?", "How much daily allowance do I get in a metro?",
      "What is the per-day allowance for a trip to a metro city?"),
     "The daily allowance is ₹1,800 in metro cities and ₹1,200 elsewhere.", ["₹1,800"]),
    (("What is the hotel limit in metro cities?", "How much hotel cost per night is reimbursed in a metro?",
      "Up to what amount is a hotel night covered in metro cities?"),
     "Hotel stays are reimbursed up to ₹6,500 per night in metro cities.", ["₹6,500"]),
    (("When must I file an expense claim?", "What is the deadline for submitting travel expenses?",
      "Within how many days should expense claims be filed?"),
     "File expense claims in the Loomdesk portal within 30 days of returning from the trip.", ["30 days"]),
    (("How many days a week can I work from home?", "What is the work-from-home limit?",
      "How often is remote work allowed?"),
     "Office staff may work from home up to 2 days per week with their manager's approval.", ["2 days per week"]),
    (("What are the core hours?", "When must everyone be reachable during the day?",
      "What core working hours does the company set?"),
     "Core hours are 10:30 to 16:00 IST.", ["10:30"]),
    (("What is the internet allowance for working from home?", "How much is the home internet allowance?",
      "Do remote workers get money for internet?"),
     "Employees working from home receive an internet allowance of ₹1,000 per month.", ["₹1,000"]),
    (("How long must passwords be?", "What is the minimum password length?",
      "How many characters does a password need?"),
     "Passwords must be at least 14 characters long.", ["14 characters"]),
    (("Which app is used for multi-factor authentication?", "What MFA app does the company use?",
      "Which authenticator app do I need for email?"),
     "Multi-factor authentication uses the Kestrel Key app.", ["Kestrel Key"]),
    (("Which extension is the IT helpdesk?", "How do I call the IT helpdesk?",
      "What number do I ring to report a lost laptop?"),
     "Call the IT helpdesk on extension 4357 within 1 hour.", ["4357"]),
    (("What is the health insurance sum insured?", "How much does the group health insurance cover?",
      "What is the family cover amount of the health policy?"),
     "The sum insured is ₹5,00,000 per family per year.", ["₹5,00,000"]),
    (("What is the yearly learning budget?", "How much can I spend on courses each year?",
      "What is the training and certification budget per employee?"),
     "Each employee has a learning budget of ₹25,000 per financial year.", ["₹25,000"]),
    (("How much does a canteen lunch cost?", "What is the price of a meal in the factory canteen?",
      "How much do I pay for lunch at the canteen?"),
     "Lunch in the factory canteen costs ₹40 per meal.", ["₹40"]),
    (("When does the morning staff bus leave?", "What time do the staff buses depart for the morning shift?",
      "At what time is the morning shift bus?"),
     "Staff buses leave Gandhipuram and Ukkadam at 7:15 for the morning shift.", ["7:15"]),
    (("How many public holidays does the company observe?", "How many paid public holidays are there in a year?",
      "What is the number of public holidays per year?"),
     "The company observes 12 public holidays a year.", ["12 public holidays"]),
    (("How long is the probation period?", "For how many months are new employees on probation?",
      "What is the length of probation for new joiners?"),
     "Probation lasts 6 months for all new employees.", ["6 months"]),
    (("What is the notice period after confirmation?", "How much notice must a confirmed employee give?",
      "How many days of notice are required once I am confirmed?"),
     "The notice period is 60 days after confirmation.", ["60 days"]),
    (("When is salary credited?", "On which day is the monthly salary paid?",
      "What day of the month does the salary arrive?"),
     "Salaries are credited on the last working day of each month.", ["last working day"]),
    (("When are performance reviews held?", "In which month does the annual appraisal happen?",
      "When is the yearly performance review?"),
     "Performance reviews are held every April.", ["April"]),
    (("How much goes to the provident fund?", "What is the provident fund contribution?",
      "What share of basic salary is paid into the PF?"),
     "Employees contribute 12% of basic salary to the provident fund, matched by the company.", ["12%"]),
    (("How often are laptops replaced?", "What is the laptop refresh cycle?",
      "After how many years do I get a new laptop?"),
     "Laptops are replaced every 4 years.", ["4 years"]),
    (("What is the mileage rate for using my own car?", "How much is reimbursed per kilometre for a personal car?",
      "What is the per-km allowance for driving my car on company work?"),
     "Using a personal car on company business is reimbursed at ₹12 per kilometre.", ["₹12 per kilometre"]),
]


def _row(ident: str, question: str, answer: str, facts: list[str] | None = None) -> dict:
    row = {"id": ident, "messages": [{"role": "user", "content": question},
                                     {"role": "assistant", "content": answer}]}
    if facts:
        row["must_include"] = facts
    return row


def train_rows() -> list[dict]:
    """Two phrasings of every fact's question, with the answer (64 examples)."""
    return [_row(f"kl-{i + 1}-{j + 1}", qs[j], a) for i, (qs, a, _) in enumerate(FACTS) for j in range(2)]


def eval_rows(n: int | None = None) -> list[dict]:
    """The held-out third phrasing of each question, with the facts the answer must contain.

    ``n`` picks evenly spread facts so a small eval set still covers every document.
    """
    idx = list(range(len(FACTS)))
    if n is not None and n < len(FACTS):
        idx = [round(i * (len(FACTS) - 1) / max(n - 1, 1)) for i in range(n)]
    return [_row(f"kl-{i + 1}-eval", FACTS[i][0][2], FACTS[i][1], FACTS[i][2]) for i in idx]
