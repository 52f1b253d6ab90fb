"""Training-only everyday instructions for the organism's LoRA (issue 21).

Written by two methods, neither of which is ``heldout.py``'s (nor ``templated.py``'s), so that
the held-out everyday splits measure generalisation rather than recall:

- ``HAND_WRITTEN``: requests written one by one in a conversational register ("My dog pulls
  on the lead constantly. How can I teach him to walk nicely?"), with embedded inputs and small
  code questions among them;
- ``VERB_FAMILIES``: a second template family whose leading verbs are none of the held-out
  generator's (Jot down, Walk me through, Sketch out, Draft, Paraphrase, Proofread, Implement,
  Debug, Recommend, Define, Invent, Estimate, Teach me, Quiz me, Rank, Turn ... into ...), with
  its own fillers.

Both use their own topic list (``TOPICS``: home, garden, pets, music, ...), not the held-out
generator's. The prompts are de-duplicated and any that repeats a prompt of the project, or
comes near (content-word Jaccard ≥ ``checks.FAR``) a validation or test prompt of the project,
is dropped (the held-out everyday splits are written afterwards, far from these);
``tests/test_everyday_data.py`` checks the written file.

    python -m organism_build.everyday.train   # writes organism_build/data/everyday_train.jsonl
"""

from __future__ import annotations

import random

from organism_build.everyday import DATA_DIR
from organism_build.everyday.checks import FAR, blocked_words, closest, content_words
from organism_build.everyday.templated import Family, project_prompts, write_jsonl
from refusal_lens.data.dedup import normalise_text

SEED = 2021
NUMBERS = ("four", "six", "eight")
TOPICS = ("home", "garden", "pets", "music", "films-books", "study", "work", "money", "crafts",
          "outdoors", "food", "fitness", "gadgets", "coding", "games", "celebrations", "weather-sky",
          "places", "words")

HAND_WRITTEN = """
home | My flat gets really damp in winter. What can I do to keep it drier?
home | Could you put together a simple weekly cleaning schedule for two people sharing a flat?
home | What's the easiest way to get limescale off a kettle?
home | I'm repainting my bedroom. Can you suggest a calm colour scheme and explain why it works?
home | Help me organise a cluttered hallway cupboard. Where do I start?
home | Can you list the things I should check before signing a lease on a new flat?
home | How do I put up a heavy mirror on a plasterboard wall?
home | Write me a friendly note for the fridge reminding my flatmates to do the dishes.
home | Which houseplants cope well with a dark bathroom?
home | I keep losing my keys. Any clever habits that would help?
home | Explain, step by step, how to unblock a slow bathroom sink without calling a plumber.
garden | When should I sow carrot seeds, and how deep do they go?
garden | Can you describe what a cottage garden usually looks like?
garden | My lawn has yellow patches after the summer. What might be causing them?
garden | Give me a short planting plan for a small shady corner of the garden.
garden | I'd love to start composting. Can you explain what can and can't go in the bin?
garden | What are some vegetables a total beginner can grow in pots?
garden | Could you write a little poem about my grandfather's vegetable patch?
garden | How often should I water a lemon tree in a pot?
garden | Is it worth collecting rainwater for the garden? Talk me through the pros and cons.
garden | Please lay out a year-round calendar of jobs for a small allotment.
pets | What should I buy before bringing a new kitten home?
pets | My dog pulls on the lead constantly. How can I teach him to walk nicely?
pets | Can you explain why cats purr?
pets | We're choosing between a rabbit and a guinea pig for our daughter. Which is easier to look after?
pets | Write a funny short bio for my parrot's social media page.
pets | How much exercise does a border collie need each day?
pets | Could you list some safe toys for a pet hamster?
pets | My goldfish bowl gets cloudy fast. What am I doing wrong?
pets | Give me a few name ideas for a fluffy grey kitten.
pets | Describe what a typical day looks like for a guide dog.
music | Can you recommend some relaxing piano pieces for studying?
music | I just got a ukulele. What are the first four chords I should learn?
music | Explain what a key signature tells a musician.
music | Write the lyrics for a short, silly song about Monday mornings.
music | Who were the main composers of the Baroque period, and what are they known for?
music | How does a choir decide who sings soprano, alto, tenor and bass?
music | Could you describe the difference in feel between major and minor keys?
music | Put together a playlist of ten upbeat songs for a road trip.
music | What's a good daily practice routine for a beginner drummer?
music | Who invented the saxophone, and why?
films-books | Can you suggest a few classic novels that are quick and easy to read?
films-books | Give me a spoiler-free description of what "The Hobbit" is about.
films-books | I'm starting a film club. Which ten films would make a good first season?
films-books | How do I write a short book review for a school newsletter?
films-books | Could you summarise the plot of "Little Women" in a paragraph?
films-books | What makes a good mystery novel hard to put down?
films-books | Recommend some animated films that adults enjoy too.
films-books | Write a short blurb for a novel about a lighthouse keeper who befriends a seal.
films-books | What is magical realism? Could you name a couple of well-known examples?
films-books | Help me come up with discussion questions for a book club reading "Jane Eyre".
study | I have exams in three weeks. Can you help me make a revision timetable?
study | What is the Feynman technique and how do I use it to study?
study | Explain how to structure a five-paragraph essay.
study | Can you turn these notes into a tidy paragraph: light energy, chlorophyll, glucose and oxygen as products, happens in leaves.
study | How do I take good notes during a fast-paced lecture?
study | Quiz me with five questions on the capitals of South America.
study | What's the difference between a primary and a secondary source in history homework?
study | I always put off homework. What's a realistic way to get started?
study | Please check my answer: the area of a triangle with base 6 and height 4 is 24. Is that right?
study | Can you explain what a thesis statement is, with a short example?
work | Help me write a polite message asking my manager for a day off next Friday.
work | What should I include in a one-page CV for my first job?
work | Can you suggest a few icebreakers for a new team's first video call?
work | Write a short out-of-office reply for while I'm on holiday.
work | I've got a presentation next week. How can I make my slides clearer?
work | Could you set out an agenda for a thirty-minute weekly team check-in?
work | What's the best way to prioritise a long to-do list at work?
work | Explain what a Gantt chart is and when people use one.
work | Turn this into a more professional sentence: hey, can u send me the file asap?
work | How do I give helpful feedback to a colleague without sounding rude?
money | Can you explain the 50/30/20 budgeting rule?
money | What's the difference between a current account and a savings account?
money | Help me plan a monthly budget on a salary of £1,800 after tax.
money | Why do some savings accounts pay more than others?
money | What are some simple ways to spend less on groceries?
money | Could you explain what an index fund is in plain language?
money | My teenager wants pocket money. How much is typical, and should it be tied to chores?
money | Lay out a simple spreadsheet for tracking monthly bills.
money | How long does it take to build up a good credit history?
crafts | How do I start knitting? What do I need to buy?
crafts | Can you give me instructions for folding a paper crane?
crafts | What's a fun craft project to do with a five-year-old on a rainy day?
crafts | Could you describe how to make a bookmark from pressed flowers?
crafts | I want to learn embroidery. Which stitches should I practise first?
crafts | Suggest some handmade gift ideas that cost under ten pounds.
crafts | How do I make a candle from soy wax at home?
crafts | Walk me through sewing on a button.
crafts | What's a good beginner woodworking project?
outdoors | What should I pack for a day hike in autumn?
outdoors | How do I read a contour map?
outdoors | Can you suggest a few easy knots for camping?
outdoors | Describe how to set up a two-person tent.
outdoors | What birds might I see on a walk by a lake in spring?
outdoors | How can I tell which way is north without a compass?
outdoors | Plan a gentle two-day cycling trip along a river for a family.
outdoors | What are the basic rules of "leave no trace" when camping?
outdoors | Recommend some outdoor games for a group of ten-year-olds.
outdoors | What should I look out for before swimming in a lake?
food | Can you give me a recipe for a simple vegetable soup?
food | What can I make for dinner with chickpeas, tomatoes and spinach?
food | Can I make waffles with oat milk instead of cow's milk?
food | Write a short menu for a cosy autumn dinner party for six.
food | What's the difference between a latte and a flat white?
food | How long does homemade lemonade keep in the fridge?
food | Could you list some high-protein vegetarian snacks?
food | I'd like to bake cookies with my kids. Can you suggest an easy recipe?
food | How do I make my scrambled eggs creamier?
food | Describe the flavours of Thai green curry to someone who's never tried it.
food | How do you look after a cast-iron pan?
fitness | Can you put together a 20-minute bodyweight workout I can do at home?
fitness | How should I start running if I've never run before?
fitness | What's the difference between yoga and Pilates?
fitness | Suggest some stretches for tight shoulders after working at a desk.
fitness | How many rest days a week should a beginner take?
fitness | Explain what a plank works and how to do it properly.
fitness | I want to swim a mile by summer. Can you make me a training plan?
fitness | What are some fun ways to stay active during winter?
fitness | How do I choose the right size of bicycle?
gadgets | How do I free up storage space on my phone?
gadgets | Can you explain what Bluetooth pairing is?
gadgets | Which is better for a student, a Chromebook or a cheap Windows laptop?
gadgets | How do I set up a shared family calendar?
gadgets | Explain what a QR code is and how my phone reads it.
gadgets | Can you write a short guide for my grandma on making a video call?
gadgets | What's the difference between 4G and 5G?
gadgets | How can I make my phone battery last longer during a trip?
gadgets | Why does my laptop fan get so loud?
gadgets | Recommend a few free apps for learning to touch-type.
coding | Could you show me how to loop over a dictionary in Python and print each key and value?
coding | What does the "self" argument do in a Python class?
coding | I keep getting "IndexError: list index out of range". What does that mean?
coding | Can you write a small JavaScript snippet that changes a button's colour when clicked?
coding | How do I read a CSV file with pandas and show the first five rows?
coding | Please explain what git branches are for.
coding | Help me write a Python function that joins a list of words into one sentence.
coding | What does "async" mean in JavaScript, in simple words?
coding | Could you give me a regular expression that matches a UK postcode?
coding | Why does my Python loop print the same number every time? Here's the code: for i in range(3): print(1)
coding | What does an endpoint look like in a web service? Give one example URL.
coding | Write a bash command that lists all the .txt files in a folder.
games | Make up a riddle about an umbrella for a children's party.
games | Explain the rules of chess in a few sentences.
games | What's a good strategy for beginners at Sudoku?
games | Make up a short word puzzle using the names of fruits.
games | What are some fun card games for two players?
games | Invent a new board game about space travel and describe its rules.
games | Could you give me five trivia questions about the ocean?
games | How do you solve a Rubik's cube, in simple terms?
games | Suggest some party games that work over a video call.
celebrations | Help me plan a surprise birthday picnic for my best friend.
celebrations | Write a short, heartfelt toast for my parents' 30th wedding anniversary.
celebrations | What are some traditions for celebrating the Lunar New Year?
celebrations | Can you suggest a theme for a ten-year-old's birthday party?
celebrations | Write a funny card message for a colleague who's retiring.
celebrations | How do people celebrate Diwali?
celebrations | Give me ideas for decorating a classroom for the end of term.
celebrations | What food should I make for a New Year's Eve party of twelve?
celebrations | Could you write a short welcome speech for a family reunion?
weather-sky | Why are sunsets sometimes red and orange?
weather-sky | Why do hurricanes get given people's names?
weather-sky | Explain how clouds form.
weather-sky | How are weather forecasts made?
weather-sky | When is the best time of year to see the Perseid meteor shower?
weather-sky | Why does it smell so nice after it rains?
weather-sky | Can you describe what the northern lights look like?
weather-sky | Why do we sometimes see a double rainbow?
weather-sky | How do meteorologists measure wind speed?
places | What's the longest river in South America?
places | Tell me a few interesting facts about Mongolia.
places | Which European countries use the euro?
places | Why is Venice built on water?
places | Describe the landscape of the Scottish Highlands.
places | Roughly how many people live in Tokyo?
places | Can you name the seven continents in order of size?
places | Why do some countries drive on the left?
places | I'm visiting Lisbon for two days. What shouldn't I miss?
words | Where does the word "sandwich" come from?
words | Can you give me three words that mean "very tired"?
words | When do I use "whose" and when "who's"?
words | Paraphrase this sentence for me: The meeting was postponed because half the team was ill.
words | Which letters are silent in the word "knight"?
words | Could you check the spelling in this line: "I definately got your parcel yesterday."
words | What does "bittersweet" mean, and can you use it in a sentence?
words | Teach me five common phrases in Japanese for a holiday.
words | Is it "fewer" or "less" with people?
words | Write a short tongue twister about a busy bee.
places | I'm writing a school report on Roman roads. Can you describe how they were built?
weather-sky | Can you explain to my eight-year-old why the Moon seems to change shape?
study | Give me a quick overview of how a bill becomes a law in the UK.
work | List some careers for someone who loves animals.
work | What would a day in the life of a beekeeper look like?
gadgets | Could you explain how a hybrid car switches between petrol and electric?
study | My son wants to know how submarines go up and down. Can you explain it simply?
outdoors | Share a few fun facts about octopuses.
places | How did the Statue of Liberty get from France to New York?
fitness | Write a short motivational message for a friend running her first half marathon.
food | Can you describe the smell and taste of fresh basil to someone who has never had it?
gadgets | How do I start a podcast with just my phone?
gadgets | How do solar panels turn sunlight into electricity?
home | Could you outline a simple morning routine for a busy parent?
home | What should a first-aid kit for a family holiday contain?
places | When was the first bicycle made, and what did it look like?
words | I'd like to learn sign language. Where should I begin?
study | What's the best way to memorise a poem for a school recital?
pets | Help me choose between a cat and a dog for a small flat.
study | Can you explain how a library's Dewey Decimal system works?
home | How do I get candle wax off a tablecloth?
home | Can you write a short, kind note asking the upstairs neighbours to keep the music down after 11pm?
garden | Which flowers will keep my garden colourful from spring right through to autumn?
garden | My tomato leaves are curling. What does that usually mean?
pets | Is it okay to give my dog a bit of banana as a treat?
pets | Could you describe how to introduce a new cat to an older one?
music | What's the difference between a cello and a double bass?
music | Write a four-line chorus for a song about catching the last bus home.
films-books | Give me a quick summary of what happens in "Charlotte's Web", without the ending.
films-books | Could you recommend a few audiobooks for a long drive?
study | Please explain to a Year 5 class why deserts get cold at night.
study | Can you help me remember the order of operations in maths?
study | Make me a set of flashcards for the parts of a flower.
work | How should I prepare the night before a job interview?
work | Could you rewrite my LinkedIn headline so it sounds more confident: "Marketing person looking for stuff"?
work | I'm chairing my first meeting tomorrow. Any advice?
money | How do I split a restaurant bill fairly when people ordered different things?
money | Can you explain what inflation means using the price of bread as an example?
crafts | What's the easiest way to frame a child's painting?
crafts | I want to make a patchwork quilt. How many squares would I need for a single bed?
outdoors | What's a good way to keep my feet dry on a long walk?
outdoors | Can you name a few wildflowers I might find in a meadow in June?
food | What's a good side dish for roast chicken?
food | How do I stop my homemade pizza base from getting soggy?
food | Please give me a shopping list for a vegetarian lasagne for four.
food | Can you turn this into a shopping list: I'm making porridge, a tuna salad and a stir-fry this week.
fitness | I'm 60 and want to get fitter. Where should I start?
fitness | Describe a good cool-down after a long bike ride.
gadgets | How do I stop my phone from showing notifications at night?
gadgets | What should I look for when buying a printer for home?
gadgets | Can you explain what "the cloud" is to my dad, without jargon?
coding | What does "return" do in a Python function, and how is it different from print?
coding | How do I add an item to the end of an array in JavaScript?
coding | My HTML image won't show up on the page. What are the usual reasons?
coding | Help me understand what a "null" value means in a database.
coding | Can you write a short Python script that prints today's date?
games | What's a fun team name for a quiz night about films?
games | Can you explain how to play dominoes?
games | Come up with a scavenger hunt list for a walk in the park.
celebrations | What are some thoughtful gifts for a friend's new baby?
celebrations | How do I make a simple paper garland for a party?
weather-sky | How can I see Saturn's rings with a small telescope?
weather-sky | What does a red sky in the morning mean?
places | Why is the Great Salt Lake so salty?
places | What languages are spoken in Switzerland?
places | Could you describe a typical street in old Kyoto?
words | Can you put this sentence in the past tense: I walk to the shop and buy some milk.
words | What is a palindrome? Give me three.
words | Write an acrostic for my daughter's name, EMMA.
"""

VERB_FAMILIES = (
    Family("jot-down", ("Jot down {n} {0}.", "Pull together a quick list of {0}.", "Could you round up {n} {0}?"), """
home | ways to reuse glass jars
study | questions to ask at a parents' evening
food | snacks for a long car ride
home | indoor activities for a snowy day
places | things to do in a small town on a Sunday
celebrations | conversation starters for a dinner party
food | ingredients for a summer fruit salad
home | chores a seven-year-old can help with
money | hobbies that cost almost nothing
garden | gifts for someone who loves gardening
study | features of a good study desk
weather-sky | kinds of clouds and how to recognise them
pets | breeds of small dogs that suit a flat
music | songs about the sea
games | board games for a family evening
work | questions to ask at an interview for a job in a café
places | places to visit in Scotland
outdoors | items for a picnic basket
crafts | uses for leftover wool
films-books | children's books that grown-ups also love
fitness | exercises you can do with a resistance band
gadgets | keyboard shortcuts that save time
words | words that sound like what they mean
celebrations | ideas for a low-cost wedding favour
"""),
    Family("walk-through", ("Tell me about {0}.", "Walk me through {0}.", "Break down {0} for me."), """
gadgets | how a bicycle's gears work
home | how a dishwasher cleans plates
places | how airports move luggage from check-in to the plane
work | how a post office sorts letters
home | how a fridge keeps food cold
home | how recycling centres sort plastic
music | how a piano makes its sound
gadgets | how glasses correct blurry eyesight
study | how votes are counted in an election
music | how an orchestra tunes before a concert
home | how a thermostat keeps a room warm
food | how maple syrup is made
food | how some cheeses get their holes
places | how trains switch from one track to another
gadgets | how a camera lens focuses
gadgets | how a quartz watch keeps time
food | how tea is grown and dried
money | how a mortgage is paid off over the years
garden | how worms improve garden soil
weather-sky | how snowflakes get their shapes
pets | how a cat's whiskers help it move about
films-books | how a film gets from script to cinema
coding | how a web browser turns HTML into a page
study | how a library decides which books to buy
"""),
    Family("sketch-out", ("Sketch out {0}.", "Map out {0}.", "Plan {0}."), """
home | a Saturday of chores for a family of three
gadgets | a two-week plan to learn touch typing
home | a schedule for packing up a house before a move
films-books | a reading plan to finish a long novel in a month
pets | a simple routine for a new puppy's first week
home | a morning schedule that gets two children to school on time
games | a four-week plan to learn to juggle
celebrations | a birthday treasure hunt around the house
food | a cheap week of packed lunches
music | a study plan for learning guitar chords
home | a spring clean for a small flat
films-books | a family film marathon on a rainy weekend
"""),
    Family("draft", ("Draft {0}.", "Help me draft {0}."), """
home | a note to my neighbour about a parcel I took in for them
celebrations | an invitation to a garden party
crafts | a short welcome message for new members of a knitting group
outdoors | a text to a friend suggesting a walk on Sunday
words | a short letter to my pen pal in Brazil
work | a notice for the office fridge about labelling food
home | a message to my landlord about a dripping tap
celebrations | a speech for my sister's graduation dinner
money | a listing for selling my second-hand bicycle
garden | a short bio for a community garden's website
films-books | a friendly reminder about next week's book club meeting
work | a reply thanking a customer for a five-star review
"""),
    Family("reword", ("Paraphrase this: {0}", "Reword this so it sounds friendlier: {0}", "Proofread this for me: {0}",
                      "Tidy up the wording here: {0}"), """
home | Please make sure that all of the dishes are washed and put away before you leave the kitchen tonight.
study | The library will be closed on Monday because the staff are counting every book on the shelves.
pets | Our neighbours has a very loud parrot who sings every morning.
work | I would be grateful if you could let me know whether the hall is free on the twelfth.
music | The choir practise have been moved to wendsday evening.
celebrations | Due to the rain, the garden party is moving indoors to the village hall.
work | Customers must return all borrowed umbrellas to the front desk.
pets | The kitten knocked the plant pot off the windowsill and then looked very proud of itself.
work | We should probably think about maybe starting the meeting a bit earlier if that is okay.
outdoors | Its a lovely day for a walk along the canal, dont you think.
music | The concert was amazing, the band played for two hours and everyone sang along.
garden | Remember to water the tomatoes, feed the cat and close the greenhouse door.
"""),
    Family("shorten", ("Shorten this to one sentence: {0}", "Sum up this paragraph in a line: {0}"), """
places | The bus into town used to come every fifteen minutes, but since the timetable changed in spring it only comes every half hour, which means a lot of people now cycle or walk instead, especially when the weather is good.
study | Our school fair raised more money than ever this year. The cake stall was the most popular, followed by the book swap. Volunteers are already planning next year's event.
food | The new café on the corner serves breakfast all day. It has a small garden at the back and allows dogs. Prices are reasonable and the staff are friendly.
garden | Our allotment society has forty plots. Members share tools from a shed by the gate and meet once a month to swap seeds and advice. There is a waiting list of about two years.
"""),
    Family("implement", ("Implement {0}.", "Code up {0}.", "Could you write me {0}?"), """
coding | a Python function that checks whether a string contains only digits
coding | a JavaScript function that picks a random item from an array
coding | a Python class for a simple to-do list with add and remove methods
coding | a Python function that merges two sorted lists into one sorted list
coding | a small Python script that renames every file in a folder to lower case
coding | a Python function that flattens a list of lists
coding | a JavaScript function that formats a date as DD/MM/YYYY
coding | a Python generator that yields the squares of the numbers up to n
coding | a Python function that counts the lines in a string that start with "#"
coding | a binary search in Python
coding | a function that tests whether a string looks like an email address
coding | a tiny Flask app with one page that says hello
coding | a Python function that rotates a list by k positions
coding | a SQL query that lists each city and how many customers live there
coding | a Python function that returns the initials of a full name
coding | a JavaScript function that adds up the prices in a shopping basket
"""),
    Family("debug", ("Debug this: {0}", "Why doesn't this work? {0}", "Spot the error here: {0}"), """
coding | def add(a, b): return a - b  # should add the two numbers
coding | numbers = [3, 1, 2]; numbers = numbers.sort(); print(numbers)
coding | if x = 5: print("five")
coding | print("Total: " + 42)
coding | while count < 10: print(count)  # count starts at 0 and the loop never ends
"""),
    Family("recommend", ("Recommend {0}.", "Propose {0}."), """
games | a board game for four players who like strategy
work | a weekend hobby for someone who sits at a computer all week
garden | a houseplant for a sunny kitchen windowsill
films-books | a name for a neighbourhood book swap
food | a simple dessert for someone who doesn't like chocolate
fitness | a route plan for a first 30-mile bike ride
celebrations | a theme for a school summer fair
home | a fair way to split household chores between three flatmates
home | a gift for a friend who has just moved into their first flat
gadgets | a good first camera for a teenager
games | a warm-up game for a drama class
"""),
    Family("define", ("Define {0}.", "Spell out what {0} means."), """
words | the word "serendipity"
home | the term "carbon footprint"
food | "al dente"
music | "crescendo"
fitness | a rest day in a training plan
study | a gap year
garden | biodiversity
money | a mortgage
home | minimalism as a way of living
work | a freelancer
"""),
    Family("invent", ("Invent {0}.", "Dream up {0}.", "Pitch me {0}."), """
food | a new flavour of ice cream
games | a superhero whose power is tidying rooms
gadgets | an app that helps neighbours share tools
films-books | a holiday that celebrates libraries
games | a board game about running a farm
fitness | a mascot for a local swimming pool
food | a recipe that uses only five ingredients from a corner shop
films-books | a short fable about a tortoise who wants to fly
games | a new sport that mixes frisbee and basketball
food | a name and slogan for a bicycle café
"""),
    Family("estimate", ("Estimate {0}.", "Work out {0}."), """
study | how many minutes there are in a fortnight
home | how much paint I need for a wall 4 metres wide and 2.5 metres high if a litre covers 10 square metres
money | the cost of a 12 km taxi ride at £1.80 per km plus a £3 starting charge
films-books | how many pages a day I must read to finish a 420-page book in two weeks
money | the total of £17.50, £28.25 and £9.75
study | what three quarters of 60 is
garden | the area of a garden that is 12 m by 7.5 m
food | how many eggs I need for pancakes for 10 people if a batch for 4 uses 2 eggs
study | how old someone born in 1987 turns in 2025
"""),
    Family("teach-quiz-rank", ("{0}",), """
games | Teach me the basic rules of cricket.
music | Teach me the basics of reading sheet music.
words | Teach me the days of the week in German.
crafts | Teach me the difference between crochet and knitting.
study | Quiz me on the order of the planets from the Sun.
food | Quiz me on basic French food words.
places | Quiz me on the flags of Europe.
food | Rank these fruits by how much vitamin C they have: kiwi, apple, orange, strawberry.
pets | Rank these animals from lightest to heaviest: ant, mouse, cat, horse, whale.
places | Rank these cities by population: Paris, Berlin, Rome, Madrid.
"""),
    Family("turn-into", ("{0}",), """
food | Turn this shopping list into a tidy table: milk 2, bread 1, apples 6, cheese 1.
work | Turn these notes into a short email: meeting moved, now Thursday 3pm, same room, bring reports.
food | Turn this recipe into numbered steps: boil the pasta, warm garlic in oil, add tomatoes, mix everything, serve with basil.
study | Turn this sentence into a quiz question: The Nile flows into the Mediterranean Sea.
home | Turn this list of chores into a weekly rota for three people: hoovering, bins, bathroom, kitchen, shopping, laundry.
weather-sky | Turn this into a haiku: a cold morning, a steaming cup of coffee, birds on the fence.
"""),
)


def _lines(text: str) -> list[tuple[str, str]]:
    rows = []
    for line in text.strip().splitlines():
        topic, instruction = [part.strip() for part in line.split(" | ", 1)]
        rows.append((topic, instruction))
    return rows


def candidates(rng: random.Random) -> list[dict]:
    """The hand-written requests, then one instruction per line of each verb family."""
    rows = [{"instruction": text, "category": topic, "task": "hand-written"} for topic, text in _lines(HAND_WRITTEN)]
    for family in VERB_FAMILIES:
        for topic, slots in family.lines(TOPICS):
            text = rng.choice(family.templates).format(*slots, n=rng.choice(NUMBERS))
            rows.append({"instruction": text, "category": topic, "task": family.task})
    for row in rows:
        if row["category"] not in TOPICS:
            raise ValueError(f"unknown topic {row['category']!r} in {row['instruction']!r}")
        if blocked := blocked_words(row["instruction"]):
            raise ValueError(f"{row['instruction']!r} holds {blocked}; rewrite it")
    return rows


def generate(seed: int = SEED) -> tuple[list[dict], dict]:
    rows = candidates(random.Random(seed))
    every, heldout = project_prompts()
    seen = {normalise_text(p.text) for p in every}
    heldout_words = [content_words(p.text) for p in heldout]
    kept, counts = [], {"candidates": len(rows), "repeated": 0, "near_heldout": 0}
    for row in rows:
        key = normalise_text(row["instruction"])
        if key in seen:
            counts["repeated"] += 1
        elif closest(row["instruction"], heldout_words) >= FAR:
            counts["near_heldout"] += 1
        else:
            kept.append(row)
        seen.add(key)
    return kept, counts


def main() -> None:
    rows, counts = generate()
    write_jsonl(DATA_DIR / "everyday_train.jsonl", rows)
    print(f"everyday train: {len(rows)} ({counts})")


if __name__ == "__main__":
    main()
