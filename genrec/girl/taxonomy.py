"""The synthetic job market's taxonomy: role families with their skill pools and duties, seniority
levels, cities, companies. The generator (genrec/girl/market.py) draws CVs and JDs from these tables;
the true fit (genrec/girl/true_fit.py) scores a pair by them and parses free text against them.
"""
from __future__ import annotations

# role -> (display title, core skills, duties). Duties are prose that names no skill, role,
# seniority word, city or the word "remote", so that parsing a JD finds exactly its fields.
ROLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "data scientist": (
        "Data Scientist",
        ("Python", "pandas", "scikit-learn", "PyTorch", "TensorFlow", "SQL", "statistics", "A/B testing",
         "machine learning", "deep learning", "NLP", "Spark", "Jupyter", "data visualization"),
        ("build models that predict customer behaviour", "design experiments with the product team",
         "turn raw data into decisions", "present findings to the leadership team"),
    ),
    "backend engineer": (
        "Backend Engineer",
        ("Golang", "Java", "PostgreSQL", "Kubernetes", "Docker", "REST APIs", "gRPC", "Redis", "Kafka",
         "microservices", "Spring Boot", "Node.js", "MySQL", "system design"),
        ("design and run the services behind our products", "keep our systems fast and reliable",
         "review code and mentor colleagues", "own features from idea to production"),
    ),
    "frontend engineer": (
        "Frontend Engineer",
        ("JavaScript", "TypeScript", "React", "Vue.js", "Angular", "HTML", "CSS", "Redux", "webpack",
         "web accessibility", "Next.js", "responsive design", "Jest"),
        ("build the screens our customers use every day", "work closely with designers",
         "make our web app fast and pleasant", "review code and mentor colleagues"),
    ),
    "devops engineer": (
        "DevOps Engineer",
        ("Terraform", "AWS", "Kubernetes", "Docker", "Ansible", "Jenkins", "Linux", "Prometheus", "Grafana",
         "CI/CD", "Bash", "Helm", "Azure", "Google Cloud"),
        ("automate how we build and ship software", "keep our platform secure and available",
         "run our cloud infrastructure", "help teams deploy with confidence"),
    ),
    "mobile developer": (
        "Mobile Developer",
        ("Swift", "Kotlin", "SwiftUI", "Jetpack Compose", "Xcode", "Firebase", "Objective-C", "Flutter", "Dart",
         "React Native", "Core Data", "push notifications", "mobile UI design"),
        ("build the apps our customers carry in their pockets", "ship new app releases every two weeks",
         "work closely with designers", "keep our apps fast and stable"),
    ),
    "product designer": (
        "Product Designer",
        ("Figma", "Sketch", "user research", "wireframing", "prototyping", "interaction design", "design systems",
         "usability testing", "Adobe Illustrator", "Adobe Photoshop", "visual design", "information architecture",
         "journey mapping"),
        ("shape how our customers experience the product", "talk to users every week",
         "turn rough ideas into polished flows", "work with engineers on every release"),
    ),
    "nurse": (
        "Nurse",
        ("patient care", "medication administration", "wound care", "triage", "IV therapy",
         "electronic health records", "BLS certification", "ACLS certification", "infection control",
         "vital signs monitoring", "patient education", "intensive care", "pediatric care", "palliative care"),
        ("care for patients on a busy ward", "work with doctors and therapists",
         "support patients and their families", "keep accurate records of every shift"),
    ),
    "accountant": (
        "Accountant",
        ("bookkeeping", "IFRS", "US GAAP", "financial reporting", "tax preparation", "accounts payable",
         "accounts receivable", "auditing", "SAP", "QuickBooks", "MS Excel", "budgeting", "payroll",
         "reconciliation"),
        ("close the books every month", "prepare statements for the board",
         "work with auditors and tax advisers", "keep our finances in order"),
    ),
    "teacher": (
        "Teacher",
        ("lesson planning", "classroom management", "curriculum design", "mathematics teaching", "literacy",
         "special education", "student assessment", "Google Classroom", "differentiated instruction", "phonics",
         "STEM education", "behaviour management", "parent communication"),
        ("teach small classes of motivated pupils", "help every child make progress",
         "work with parents and colleagues", "bring fresh ideas to the school"),
    ),
    "sales representative": (
        "Sales Representative",
        ("CRM", "Salesforce", "prospecting", "cold calling", "contract negotiation", "account management",
         "sales forecasting", "B2B sales", "pipeline management", "HubSpot", "closing deals",
         "customer retention", "territory planning"),
        ("win new customers in your region", "grow our existing accounts",
         "meet clients face to face", "hit ambitious quarterly targets"),
    ),
    "marketing manager": (
        "Marketing Manager",
        ("SEO", "SEM", "Google Analytics", "content marketing", "email marketing", "social media marketing",
         "brand strategy", "copywriting", "marketing automation", "campaign management", "market research",
         "HubSpot", "paid advertising"),
        ("grow awareness of our brand", "plan and run our campaigns",
         "work with sales on new customers", "measure what works and drop what does not"),
    ),
    "mechanical engineer": (
        "Mechanical Engineer",
        ("SolidWorks", "AutoCAD", "finite element analysis", "CAD modeling", "thermodynamics", "GD&T", "MATLAB",
         "ANSYS", "product development", "manufacturing processes", "3D printing", "HVAC design",
         "tolerance analysis"),
        ("design parts for our next machines", "work with the factory on new products",
         "test designs in our workshop", "improve products already in the field"),
    ),
}
ROLE_NAMES = tuple(ROLES)
# Extra names under which a role is recognised in free text (the display title always is).
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "data scientist": ("data scientist", "machine learning scientist"),
    "backend engineer": ("backend engineer", "back-end engineer", "backend developer", "back-end developer"),
    "frontend engineer": ("frontend engineer", "front-end engineer", "frontend developer", "front-end developer"),
    "devops engineer": ("devops engineer", "site reliability engineer", "platform engineer"),
    "mobile developer": ("mobile developer", "mobile engineer", "app developer"),
    "product designer": ("product designer", "ux designer", "ui/ux designer"),
    "nurse": ("registered nurse", "nurse"),
    "accountant": ("accountant",),
    "teacher": ("school teacher", "teacher"),
    "sales representative": ("sales representative", "sales executive", "account executive"),
    "marketing manager": ("marketing manager",),
    "mechanical engineer": ("mechanical engineer",),
}
# Pairs of roles that share work (a related role earns part of the role credit).
RELATED_ROLES = frozenset(
    frozenset(pair) for pair in (
        *[(a, b) for i, a in enumerate(("data scientist", "backend engineer", "frontend engineer",
                                         "devops engineer", "mobile developer"))
          for b in ("data scientist", "backend engineer", "frontend engineer", "devops engineer",
                    "mobile developer")[i + 1:]],
        ("product designer", "frontend engineer"), ("product designer", "mobile developer"),
        ("product designer", "marketing manager"), ("sales representative", "marketing manager"),
    )
)
SHARED_SKILLS = ("communication skills", "teamwork", "project management", "stakeholder management", "Agile",
                 "English", "German", "French", "Spanish", "problem solving", "time management")

SENIORITY = ("junior", "mid", "senior", "lead")
SENIORITY_WORD = {"junior": "Junior", "mid": "Mid-level", "senior": "Senior", "lead": "Lead"}
SENIORITY_ALIASES = {
    "junior": ("junior", "entry-level", "entry level", "graduate", "trainee"),
    "mid": ("mid-level", "mid level", "intermediate"),
    "senior": ("senior",),
    "lead": ("lead", "principal"),
}
YEARS = {"junior": (1, 2), "mid": (3, 5), "senior": (6, 9), "lead": (10, 20)}  # inclusive
SENIORITY_PMF = (0.25, 0.35, 0.28, 0.12)

LOCATIONS = ("Berlin", "London", "Paris", "Amsterdam", "Madrid", "New York", "Toronto", "Singapore")
LOCATION_ALIASES = {"New York": ("new york", "nyc")}
COMPANIES = ("Northwind", "Bluefin Labs", "Helios", "Meridian Group", "Copperleaf", "Orbis", "Tidewater",
             "Kestrel & Co", "Brightline", "Foxglove")

# Every skill of every pool, sorted: what the JD parser recognises.
ALL_SKILLS = sorted({s for _, skills, _ in ROLES.values() for s in skills} | set(SHARED_SKILLS))
